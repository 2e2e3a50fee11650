"""The ``--db`` option of the queue and replay commands, and their one-line failures.

One setting names the database everywhere: ``--db URL``, else ``$RX_AUDIT_DB_URL`` (what the review
UI reads too), else its older alias ``$RX_AUDIT_DB``; both set to different URLs is refused. A bad
URL, an unreachable server, a database that is not migrated or an unwritable path is one line on
stderr naming the URL (password masked) and exit status 2 — never a traceback.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from rx_audit.cli.common import fail

DEFAULT_DB = "sqlite:///rx_audit.db"
ENV_DB = "RX_AUDIT_DB_URL"
ENV_DB_ALIAS = "RX_AUDIT_DB"
DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help=f"SQLAlchemy URL, e.g. sqlite:///var/rx.db or postgresql+psycopg://user@host/db "
        f"(default: ${ENV_DB}, or its alias ${ENV_DB_ALIAS}, else {DEFAULT_DB})",
        show_default=False,
    ),
]
_F = TypeVar("_F", bound=Callable[..., Any])


def mask(url: str) -> str:
    """The URL with its password replaced by ``***`` (``<database URL>`` when it is not one)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database URL>"


def database_url(db: str | None, *, default: str | None = DEFAULT_DB) -> str | None:
    """``--db``, else ``$RX_AUDIT_DB_URL``, else ``$RX_AUDIT_DB``, else ``default``; checked to be a URL."""
    if not db:
        primary, alias = os.environ.get(ENV_DB) or None, os.environ.get(ENV_DB_ALIAS) or None
        if primary and alias and primary != alias:
            fail(f"${ENV_DB} ({mask(primary)}) and ${ENV_DB_ALIAS} ({mask(alias)}) differ: set one of them")
        db = primary or alias or default
    if db is None:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(db)
    except ArgumentError:
        fail(f"不是数据库URL (not a database URL): {mask(db)} — e.g. sqlite:///var/rx.db")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        fail(f"不支持的数据库 (unsupported database {url.get_backend_name()!r}; sqlite or postgresql): {mask(db)}")
    return db


def existing_database(db: str | None) -> str:
    """The URL of a database that must exist already: a missing SQLite file is refused (reads and
    checks never create an empty database and print zeros for it)."""
    url = database_url(db)
    assert url is not None
    from rx_audit.queue.database import sqlite_file

    path = sqlite_file(url) if url.startswith("sqlite") else None
    if path is not None and not path.is_file():
        fail(
            f"没有这个数据库文件 (no such database file): {path} — "
            f"create it with `rx-audit queue migrate --db {mask(url)}`"
        )
    return url


def issue_date(value: str | None, option: str) -> str | None:
    """A ``YYYY-MM-DD`` issue date, or one clear line."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        fail(f"{option} {value!r} 不是日期 (not a date: YYYY-MM-DD)")


def one_line_errors(command: _F) -> _F:
    """A failure of the queue, its database or a path → one line on stderr, exit status 2. The URL
    in any message is masked."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as error:
            db = kwargs.get("db") or os.environ.get(ENV_DB) or os.environ.get(ENV_DB_ALIAS)
            fail(_hide_password(_describe(error, db), db))

    return wrapper  # type: ignore[return-value]


def _describe(error: Exception, db: str | None) -> str:
    from sqlalchemy.exc import SQLAlchemyError

    from rx_audit.errors import QueueError

    where = mask(db) if db else "the database"
    if isinstance(error, QueueError):
        return str(error) or type(error).__name__
    if isinstance(error, SQLAlchemyError):
        first = str(getattr(error, "orig", None) or error).strip().splitlines()
        return f"数据库错误 (database error): {where}: {first[0] if first else type(error).__name__}"
    if isinstance(error, ImportError):
        return f"缺少数据库驱动 (database driver not installed: {error.name or error}): {where}"
    if isinstance(error, OSError):
        target = error.filename if error.filename is not None else where
        return f"无法写入或读取 (cannot access) {target}: {error.strerror or error}"
    raise error


def _hide_password(message: str, db: str | None) -> str:
    """Never print a password, whatever the message quoted: the URL as given becomes the masked one."""
    return message.replace(db, mask(db)) if db else message


def writable_file(path: Path | None, option: str) -> Path | None:
    """A file the command will write: its folder must exist and be writable (checked before the work)."""
    if path is None:
        return None
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        fail(f"{option} {path}: 无法写入 (cannot write there)")
    return path
