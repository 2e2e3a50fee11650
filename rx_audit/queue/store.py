"""The queue's connection to its database: engines (a writer and a reader), short transactions,
the schema check on open (no DDL), and the row helpers every part of the queue uses.

Every write is one short transaction; on SQLite writes start with ``BEGIN IMMEDIATE`` (no lock
upgrade deadlocks between processes). All times are aware UTC.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Self

from sqlalchemy import Table, func, insert, select
from sqlmodel import Session

from rx_audit.errors import DatabaseReadOnlyError, NotFoundError, SchemaVersionError
from rx_audit.queue.database import (
    DEFAULT_LOCK_TIMEOUT,
    app_engines,
    db_operation,
    mask_url,
    sqlite_file,
    sqlite_read_only,
)
from rx_audit.queue.gate import WriterGate
from rx_audit.queue.migrate import SCHEMA_HEAD, schema_version
from rx_audit.queue.schemas import ReviewItem
from rx_audit.queue.tables import ReviewItemRow


class QueueStore:
    """The database of one queue: ``url``, its engines and sessions. The parts of
    :class:`~rx_audit.queue.ReviewQueue` build on it."""

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        statement_timeout: float = 300.0,
        read_only: bool | None = None,
    ) -> None:
        self.url = url
        self.lock_timeout = float(lock_timeout)
        self.statement_timeout = float(statement_timeout)
        self.is_sqlite = url.startswith("sqlite")
        self.is_postgres = url.startswith("postgresql")
        immutable = False
        if self.is_sqlite and read_only is None:
            read_only, immutable = sqlite_read_only(url)
        self.read_only = bool(read_only)
        self._engine, self._read_engine = app_engines(
            url,
            echo=echo,
            lock_timeout=self.lock_timeout,
            statement_timeout=self.statement_timeout,
            read_only=self.read_only,
            immutable=immutable,
        )
        # A read of several statements sees one snapshot: on PostgreSQL's default READ COMMITTED an
        # item read before a decision's commit and its decisions read after it gave a torn state
        # ("claimed" with the return's decision; a long poll answered it). SQLite's reader already
        # opens one transaction (BEGIN) per read.
        self._snapshot_engine = (self._read_engine.execution_options(isolation_level="REPEATABLE READ")
                                 if self.is_postgres else self._read_engine)
        self._gate = WriterGate(sqlite_file(url) if self.is_sqlite and not self.read_only else None, self.lock_timeout)
        self.schema_version = self._check_schema()

    @db_operation
    def _check_schema(self) -> str:
        """No DDL here: the schema is the migrations' (DDL on open deadlocked with live decisions)."""
        with self._read_engine.connect() as connection:
            version = schema_version(connection)
        if version != SCHEMA_HEAD:
            raise SchemaVersionError(
                f"审方队列数据库结构版本为 {version or '(无)'}，需要 {SCHEMA_HEAD}：请先运行 "
                f"`rx-audit queue migrate --db {mask_url(self.url)}` "
                f"(database schema is at {version or 'none'}, needs {SCHEMA_HEAD}: run the migrate command)"
            )
        return version

    def close(self) -> None:
        self._gate.close()
        self._engine.dispose()
        if self._read_engine is not self._engine:
            self._read_engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        if self.read_only:
            raise DatabaseReadOnlyError(
                f"数据库以只读方式打开，不能写入 (database opened read-only): {mask_url(self.url)}", mask_url(self.url)
            )
        # On a SQLite file, writers take turns at the gate (rx_audit.queue.gate) instead of sleeping
        # in SQLite's busy handler.
        with self._gate(), Session(self._engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self._snapshot_engine, expire_on_commit=False) as session:
            yield session

    def _insert_returning_ids(self, session: Session, table: Table, rows: list[dict[str, Any]]) -> list[int]:
        """Insert rows, returning their ids in order. On SQLite the write lock is ours (BEGIN
        IMMEDIATE), so ids are allocated here and the rows go in with one executemany — SQLite
        cannot order a multi-row RETURNING, which would make SQLAlchemy insert row by row."""
        if not rows:
            return []
        if self.is_sqlite:
            start = int(session.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one())
            ids = list(range(start + 1, start + 1 + len(rows)))
            session.execute(insert(table), [{**row, "id": row_id} for row, row_id in zip(rows, ids, strict=True)])
            return ids
        inserted = session.execute(insert(table).returning(table.c.id, sort_by_parameter_order=True), rows).all()
        return [row_id for (row_id,) in inserted]

    @staticmethod
    def _item_row(session: Session, item_id: int, scope: Sequence[str] | None = None) -> ReviewItemRow:
        row = session.get(ReviewItemRow, item_id)
        # Outside the caller's scope is the same answer as absent: existence is not revealed.
        if row is None or (scope is not None and row.facility_id not in set(scope)):
            raise NotFoundError(f"审方任务 {item_id} 不存在 (no such review item)")
        return row

    @staticmethod
    def _public(row: ReviewItemRow) -> ReviewItem:
        return ReviewItem.model_validate(row)
