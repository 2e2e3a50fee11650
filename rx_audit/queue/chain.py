"""Tamper evidence: ``rx_audit_trail`` and ``rx_decision`` are hash chains. Each row stores the
previous row's hash and its own over a canonical serialisation (:func:`chain_hash`); writers
serialise on the chain head row (``rx_chain_head``, locked ``FOR UPDATE`` on PostgreSQL, under
``BEGIN IMMEDIATE`` on SQLite); :meth:`ChainedStore.verify` / ``rx-audit queue verify`` walks them.
A status change must name a new trail row recording exactly that change (``trail_id``; a trigger
refuses it otherwise), and every status change is written with its trail row in one transaction.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, or_, select, update
from sqlmodel import Session

from rx_audit.errors import SchemaVersionError
from rx_audit.queue.common import canonical_json, clean_text, utc
from rx_audit.queue.database import db_operation
from rx_audit.queue.schemas import VerifyResult
from rx_audit.queue.store import QueueStore
from rx_audit.queue.tables import DECISIONS, HEADS, ITEMS, TRAIL

GENESIS = "0" * 64
CHAIN_FIELDS: dict[str, tuple[str, ...]] = {
    "rx_audit_trail": (
        "chain_seq", "prev_hash", "item_id", "prescription_id", "version", "actor", "action",
        "from_status", "to_status", "reason_code", "reason", "at",
    ),
    "rx_decision": (
        "chain_seq", "prev_hash", "item_id", "prescription_id", "version", "actor", "role", "action",
        "reason_code", "comment", "at",
    ),
}  # fmt: skip


def _canon(value: Any) -> Any:
    if isinstance(value, datetime):
        return utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # SQLite gives naive UTC back, PostgreSQL aware
    return value


def chain_hash(table: str, row: Any) -> str:
    """The hash of one trail/decision row: sha256 over the table name and its chained fields
    (``CHAIN_FIELDS``, which include ``prev_hash`` and ``chain_seq``), canonical JSON."""
    get = row.get if isinstance(row, dict) else row.__getitem__
    data = {name: _canon(get(name)) for name in CHAIN_FIELDS[table]}
    return hashlib.sha256(canonical_json([table, data]).encode("utf-8")).hexdigest()


class ChainedStore(QueueStore):
    """Appending to the hash chains, and verifying them."""

    def _append(self, session: Session, table: Table, rows: list[dict[str, Any]]) -> list[int]:
        """Append rows to a chained table: lock its chain head (first append of the transaction),
        link and hash each row, insert, move the head. Returns the new ids in order."""
        key = ("rx_chain", table.name)
        head = session.info.get(key)
        if head is None:
            stmt = select(HEADS.c.seq, HEADS.c.last_hash).where(HEADS.c.name == table.name)
            if self.is_postgres:
                stmt = stmt.with_for_update()
            found = session.execute(stmt).one_or_none()
            if found is None:
                raise SchemaVersionError(f"{table.name}: 缺少哈希链头 (no chain head): run `rx-audit queue migrate`")
            head = (int(found[0]), str(found[1]))
        seq, last = head
        linked = []
        for row in rows:
            seq += 1
            row = {**clean_text(row), "chain_seq": seq, "prev_hash": last}
            row["row_hash"] = last = chain_hash(table.name, row)
            linked.append(row)
        ids = self._insert_returning_ids(session, table, linked)
        session.execute(update(HEADS).where(HEADS.c.name == table.name).values(seq=seq, last_hash=last))
        session.info[key] = (seq, last)
        return ids

    def _trail(self, session: Session, **row: Any) -> int:
        """Append one trail row; its id."""
        return self._append(session, TRAIL, [row])[0]

    @db_operation
    def verify(self) -> VerifyResult:
        """Walk both hash chains (content, links, sequence, head) and check every item's status is the
        one its last trail row recorded. The first break is reported; nothing is changed."""
        rows = 0
        with self._read() as session:
            for table in (TRAIL, DECISIONS):
                broken, counted = _verify_chain(session, table)
                rows += counted
                if broken is not None:
                    broken.rows = rows
                    return broken
            broken = _verify_statuses(session)
            if broken is not None:
                broken.rows = rows
                return broken
        return VerifyResult(True, rows)


def _verify_chain(session: Session, table: Table) -> tuple[VerifyResult | None, int]:
    """(the first break of one chain or None, rows verified before it)."""
    unchained = session.execute(
        select(table.c.id).where(table.c.chain_seq.is_(None)).order_by(table.c.id).limit(1)
    ).scalar_one_or_none()
    if unchained is not None:
        return VerifyResult(False, 0, table.name, unchained, "row outside the hash chain (no chain_seq)"), 0
    previous, expected, rows = GENESIS, 1, 0
    last_id: int | None = None
    result = session.execute(select(table).order_by(table.c.chain_seq).execution_options(yield_per=2000))
    for row in result.mappings():
        problem = _link_problem(table.name, row, previous, expected)
        if problem is not None:
            return VerifyResult(False, rows, table.name, row["id"], problem), rows
        previous, expected, last_id = row["row_hash"], expected + 1, row["id"]
        rows += 1
    head = session.execute(select(HEADS.c.seq, HEADS.c.last_hash).where(HEADS.c.name == table.name)).one_or_none()
    if head is None or (int(head[0]), head[1]) != (expected - 1, previous):
        return VerifyResult(
            False, rows, table.name, last_id, "chain head does not match the last row (rows removed?)"
        ), rows
    return None, rows


def _link_problem(table: str, row: Any, previous: str, expected: int) -> str | None:
    if row["chain_seq"] != expected:
        return f"chain_seq {row['chain_seq']}, expected {expected}"
    if row["prev_hash"] != previous:
        return "prev_hash does not match the row before"
    if row["row_hash"] != chain_hash(table, row):
        return "row_hash does not match its content"
    return None


def _verify_statuses(session: Session) -> VerifyResult | None:
    """Every item's status is what its last trail row says it became."""
    mismatch = session.execute(
        select(ITEMS.c.id, ITEMS.c.status, TRAIL.c.to_status, TRAIL.c.item_id)
        .select_from(ITEMS.outerjoin(TRAIL, TRAIL.c.id == ITEMS.c.trail_id))
        .where(
            or_(
                and_(ITEMS.c.trail_id.is_(None), ITEMS.c.status != "pending"),
                and_(
                    ITEMS.c.trail_id.is_not(None),
                    or_(TRAIL.c.id.is_(None), TRAIL.c.item_id != ITEMS.c.id, TRAIL.c.to_status != ITEMS.c.status),
                ),
            )
        )
        .order_by(ITEMS.c.id)
        .limit(1)
    ).first()
    if mismatch is None:
        return None
    return VerifyResult(
        False,
        0,
        "rx_review_item",
        mismatch[0],
        f"status {mismatch[1]!r} is not the one its last trail row recorded ({mismatch[2]!r})",
    )
