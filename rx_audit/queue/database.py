"""The database underneath the queue: URLs (password masked), engines for SQLite and PostgreSQL,
and what a driver error means (transient → retried with back-off, else one clear line).

Failures: transient errors (connection refused or lost, deadlock, serialisation failure, lock not
granted) are retried with bounded back-off, then a :class:`~rx_audit.errors.DatabaseError` subclass
with one clear line and the URL's password masked. Locks wait at most ``lock_timeout`` seconds
(SQLite busy_timeout, PostgreSQL lock_timeout). A SQLite file that is not writable is opened
read-only (``mode=ro``; ``immutable`` when its directory is read-only too).
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from rx_audit.errors import (
    DatabaseError,
    DatabaseFullError,
    DatabaseLockedError,
    DatabaseReadOnlyError,
    DatabaseUnavailableError,
)

DEFAULT_LOCK_TIMEOUT = 8.0
_P = ParamSpec("_P")
_R = TypeVar("_R")


class _HasUrl(Protocol):
    url: str


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages and logs)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: say nothing of it
        return "<database URL>"


_operation = threading.local()
# PostgreSQL SQLSTATEs: 08* connection, 57P0x shutdown, 40001 serialisation, 40P01 deadlock, 55P03 lock
# not available, 57014 statement timeout, 25006 read-only transaction, 53100 disk full, 42501 privilege.
_PG_UNAVAILABLE = ("08", "57P01", "57P02", "57P03")
_TEXT_UNAVAILABLE = (
    "connection refused",
    "could not connect",
    "server closed the connection",
    "connection is closed",
    "terminating connection",
    "connection timeout",
    "timeout expired",
    "the database system is",
)


def classify_error(error: BaseException, url: str) -> tuple[DatabaseError | None, int]:
    """The DatabaseError a driver error stands for and how many attempts it deserves (None: not ours)."""
    where = mask_url(url)
    if isinstance(error, PoolTimeoutError):
        return DatabaseLockedError(f"数据库连接池已满，等待超时 (connection pool exhausted): {where}", where), 3
    orig = getattr(error, "orig", None)
    state = str(getattr(orig, "sqlstate", "") or "")
    lines = str(orig if orig is not None else error).strip().splitlines()
    message = lines[0] if lines else type(error).__name__
    lowered = message.lower()
    invalidated = isinstance(error, DBAPIError) and error.connection_invalidated
    if invalidated or state.startswith(_PG_UNAVAILABLE) or any(t in lowered for t in _TEXT_UNAVAILABLE):
        return DatabaseUnavailableError(f"无法连接数据库 (database unavailable): {where}: {message}", where), 5
    if state in ("40001", "40P01") or "deadlock" in lowered:
        return DatabaseLockedError(
            f"数据库事务冲突，重试后仍失败 (deadlock/serialisation): {where}: {message}", where
        ), 5
    if state in ("55P03", "57014") or "database is locked" in lowered or "database table is locked" in lowered:
        return DatabaseLockedError(f"数据库被锁定，等待超时 (lock timeout): {where}: {message}", where), 2
    if state == "25006" or "readonly" in lowered or "read-only" in lowered:
        return DatabaseReadOnlyError(f"数据库只读，不能写入 (database is read-only): {where}", where), 1
    if state == "53100" or "disk is full" in lowered or "no space left" in lowered:
        return DatabaseFullError(f"磁盘或数据库已满 (disk or database full): {where}: {message}", where), 1
    if state == "42501":
        return DatabaseError(f"数据库权限不足 (permission denied): {where}: {message}", where), 1
    if "unable to open database file" in lowered or "disk i/o error" in lowered:
        return DatabaseUnavailableError(f"无法打开数据库文件 (cannot open the database file): {where}", where), 1
    return None, 0


def db_operation(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Retry transient database errors with bounded back-off; then one clear DatabaseError. Nested
    operations (submit → store_prepared) leave the retrying to the outermost one. The method's
    first argument has the database ``url``."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if getattr(_operation, "depth", 0):
            return method(*args, **kwargs)
        owner: _HasUrl = args[0]  # type: ignore[assignment]  # self: every decorated method's owner has .url
        _operation.depth = 1
        try:
            return _retrying(method, owner.url, args, kwargs)
        finally:
            _operation.depth = 0

    return wrapper


def _retrying(method: Callable[..., _R], url: str, args: Any, kwargs: Any) -> _R:
    attempt = 0
    while True:
        try:
            return method(*args, **kwargs)
        except (DBAPIError, PoolTimeoutError) as error:
            failure, attempts = classify_error(error, url)
            if failure is None:
                raise
            attempt += 1
            if attempt >= attempts:
                raise failure from error
            time.sleep(min(2.0, 0.2 * 2 ** (attempt - 1)))


def as_database_error(error: BaseException, url: str) -> DatabaseError | None:
    """The one-line DatabaseError ``error`` stands for (None: not a database failure — a bug, a constraint)."""
    return classify_error(error, url)[0]


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None: in memory, or a ``file:`` URI)."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def sqlite_read_only(url: str) -> tuple[bool, bool]:
    """(read-only, immutable): ``?mode=ro`` in the URL, or a file/directory without write bits —
    checked on the mode bits too, because root may write a 0444 file the operator meant to freeze."""
    query = make_url(url).query
    path = sqlite_file(url)
    directory_frozen = path is not None and path.parent.exists() and not _writable(path.parent)
    if query.get("mode") == "ro":
        return True, directory_frozen
    if path is None or not path.exists():
        return False, False
    return (not _writable(path) or directory_frozen), directory_frozen


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def sqlite_connect_pragmas(dbapi_connection: Any, lock_timeout: float, read_only: bool) -> None:
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(lock_timeout * 1000)}")
    if not read_only:
        cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # Belt and braces for REPLACE: with recursive triggers on, a REPLACE fires the DELETE trigger too
    # (the BEFORE INSERT trigger of migration 0002 refuses it on any connection).
    cursor.execute("PRAGMA recursive_triggers=ON")
    cursor.close()


def postgres_session(dbapi_connection: Any, lock_timeout: float, statement_timeout: float) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"SET lock_timeout = {int(lock_timeout * 1000)}")
    cursor.execute(f"SET statement_timeout = {int(statement_timeout * 1000)}")
    cursor.execute("SET idle_in_transaction_session_timeout = 600000")
    cursor.execute("SET TIME ZONE 'UTC'")
    cursor.close()
    dbapi_connection.commit()


def app_engines(
    url: str, *, echo: bool, lock_timeout: float, statement_timeout: float, read_only: bool, immutable: bool
) -> tuple[Engine, Engine]:
    """(write engine, read engine) of the application; the same engine on PostgreSQL and read-only SQLite."""
    if not url.startswith("sqlite"):
        engine = _postgres_engine(url, echo, lock_timeout, statement_timeout, read_only)
        return engine, engine
    path = sqlite_file(url)
    if read_only and path is not None:
        # A read-only file (or directory) opens only through a URI with mode=ro (immutable when
        # the directory is frozen too, since then SQLite cannot create the WAL's -shm file).
        uri = f"file:{path.resolve()}?mode=ro" + ("&immutable=1" if immutable else "")
        url = "sqlite:///" + uri + "&uri=true"
    if read_only:
        engine = _sqlite_engine(url, echo, lock_timeout, read_only, "BEGIN")
        return engine, engine
    return (
        _sqlite_engine(url, echo, lock_timeout, read_only, "BEGIN IMMEDIATE"),
        _sqlite_engine(url, echo, lock_timeout, read_only, "BEGIN"),
    )


def _postgres_engine(url: str, echo: bool, lock_timeout: float, statement_timeout: float, read_only: bool) -> Engine:
    engine = create_engine(
        url,
        echo=echo,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        pool_timeout=max(30.0, lock_timeout * 4),
        connect_args={"connect_timeout": 10},
    )

    @event.listens_for(engine, "connect")
    def _pg_connect(dbapi_connection: Any, _record: Any) -> None:
        postgres_session(dbapi_connection, lock_timeout, statement_timeout)
        if read_only:
            cursor = dbapi_connection.cursor()
            cursor.execute("SET default_transaction_read_only = on")
            cursor.close()
            dbapi_connection.commit()

    return engine


def _sqlite_engine(url: str, echo: bool, lock_timeout: float, read_only: bool, begin: str) -> Engine:
    engine = create_engine(
        url,
        echo=echo,
        connect_args={"timeout": lock_timeout, "check_same_thread": False},
        pool_size=8,
        max_overflow=32,
        pool_timeout=max(30.0, lock_timeout * 4),
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        sqlite_connect_pragmas(dbapi_connection, lock_timeout, read_only)

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql(begin)

    return engine
