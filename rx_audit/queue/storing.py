"""Storing prepared records in one transaction: which version each record is (a repeat, a new
audit of a stored version, a new version), the prescription rows, the audits, and for flagged
audits the review items with their findings and ``submitted`` trail rows.

Versions: the same prescription id with the same content (canonical JSON) is a *repeat* (nothing
stored), with different content a *new version* (audited and queued). A record with an explicit
version (a doctor's resubmission) is stored as that version.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from rx_audit.queue.chain import ChainedStore
from rx_audit.queue.common import SEVERITY_RANK, utcnow
from rx_audit.queue.database import db_operation
from rx_audit.queue.schemas import PreparedRecord, StoreOutcome
from rx_audit.queue.tables import AUDITS, FINDINGS, ITEMS, PRESCRIPTIONS, TRAIL

_BATCH = 500  # ids per IN (…) list
Kind = Literal["stored", "new_version", "repeat"]


@dataclass
class _RxRef:
    """One version of a prescription while storing: stored (id known) or about to be inserted."""

    version: int
    content_hash: str | None
    id: int | None = None
    previous: _RxRef | None = None


@dataclass
class _Step:
    """What one record is: the version it stores to, and whether that version already existed."""

    record: PreparedRecord
    ref: _RxRef
    kind: Literal["existing", "stored", "new_version"]

    @property
    def audit_key(self) -> tuple[int, str]:
        assert self.ref.id is not None
        return self.ref.id, self.record.result["rulebook"]


def _batches(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), _BATCH):
        yield values[start : start + _BATCH]


Placement = Literal["existing", "stored", "new_version"]


def _place(record: PreparedRecord, versions: list[_RxRef]) -> tuple[_RxRef, Placement]:
    """The version ``record`` is among the id's known ``versions`` (a new one is appended to them)."""
    version = record.key[1]
    explicit = bool(record.extra.get("explicit_version"))
    same_version = next((ref for ref in versions if ref.version == version), None)
    same_content = next((ref for ref in versions if ref.content_hash == record.content_hash), None)
    if explicit and same_version is not None:
        return same_version, "existing"
    if not explicit and same_content is not None:
        return same_content, "existing"
    if same_version is None:
        ref = _RxRef(version=version, content_hash=record.content_hash)
        versions.append(ref)
        return ref, "stored"
    # Same id, same version number, other content: the next version.
    latest = max(versions, key=lambda known: known.version)
    ref = _RxRef(version=latest.version + 1, content_hash=record.content_hash, previous=latest)
    versions.append(ref)
    return ref, "new_version"


def _prescription_row(step: _Step, now: datetime, source: str) -> dict[str, Any]:
    record = step.record
    return {
        **record.prescription,
        "version": step.ref.version,
        "payload": record.payload,
        "received_at": now,
        "source": source,
        "previous_id": record.extra.get("previous_id"),
        "content_hash": record.content_hash,
        "source_line": record.extra.get("line"),
    }


def _comma_list(values: set[str]) -> str:
    """ ",a,b," — LIKE-filterable on every database."""
    ordered = sorted(values)
    return "," + ",".join(ordered) + ("," if ordered else "")


def _item_row(step: _Step, audit_id: int, previous_item: int | None, now: datetime, source: str) -> dict[str, Any]:
    rx, result, findings = step.record.prescription, step.record.result, step.record.findings
    severity = result["severity"]
    return {
        "prescription_id": rx["prescription_id"],
        "version": step.ref.version,
        "rulebook": result["rulebook"],
        "status": "pending",
        "severity": severity,
        "severity_rank": SEVERITY_RANK.get(severity, 0),
        "categories": _comma_list({category for _, category, _ in findings}),
        "rules": _comma_list({rule for rule, _, _ in findings}),
        "facility_id": rx["facility_id"],
        "facility_name": rx["facility_name"],
        "department": rx["department"],
        "prescriber_id": rx["prescriber_id"],
        "patient_id": rx["patient_id"],
        "day": rx["day"] or now.date().isoformat(),
        "source": source,
        "submitted_at": now,
        "queued_at": now,
        "previous_item_id": previous_item,
        "priority": 0,
        "prescription_row_id": step.ref.id,
        "audit_result_id": audit_id,
        "ready": 1,
        "requeue_status": "pending",
    }


def _submitted_trail(step: _Step, item_id: int, actor: str, now: datetime) -> dict[str, Any]:
    return {
        "item_id": item_id,
        "prescription_id": step.record.key[0],
        "version": step.ref.version,
        "actor": actor,
        "action": "submitted",
        "from_status": None,
        "to_status": "pending",
        "reason": f"审核标记 flagged: {step.record.result['severity']}"
        + (f" (新版本 new version v{step.ref.version})" if step.ref.previous is not None else ""),
        "at": now,
        "reason_code": None,
    }


class Storing(ChainedStore):
    """:meth:`store_prepared`, what submit and replay store through."""

    @db_operation
    def store_prepared(
        self, records: Sequence[PreparedRecord], *, source: str = "replay", actor: str | None = None
    ) -> list[StoreOutcome]:
        """Store many prepared records in one transaction; for each, what became of it (:class:`StoreOutcome`).

        Per prescription id: content already stored is a repeat (a new audit only for a new
        rulebook), other content is the next version — records of one call are taken in order. A
        record with an explicit version (:meth:`resubmit`) is stored as that version. Used by
        :meth:`submit` and by replay.
        """
        for attempt in range(8):
            try:
                with self._write() as session:
                    return self._store_prepared(session, records, source=source, actor=actor or source)
            except IntegrityError:
                if attempt == 7:
                    raise  # pragma: no cover - a persistent conflict is a bug, not a race
        raise AssertionError("unreachable")

    def _store_prepared(
        self, session: Session, records: Sequence[PreparedRecord], *, source: str, actor: str
    ) -> list[StoreOutcome]:
        now = utcnow()
        known = self._known_versions(session, sorted({r.key[0] for r in records}))
        # Which stored (or new) version each record is, in order: a later record of the same id sees
        # the versions the earlier ones made.
        steps = [_Step(record, *_place(record, known[record.key[0]])) for record in records]
        self._insert_versions(session, [step for step in steps if step.kind != "existing"], now, source)
        audited = self._audits_of(session, sorted({step.ref.id for step in steps if step.ref.id is not None}))
        kinds: list[Kind] = []
        fresh: list[_Step] = []
        for step in steps:
            if step.audit_key in audited:
                kinds.append("repeat")
                continue
            audited[step.audit_key] = 0  # placeholder: a later record of this call is a repeat
            fresh.append(step)
            kinds.append("stored" if step.kind == "existing" else step.kind)
        self._insert_audits(session, fresh, audited, now)
        flagged = [step for step in fresh if step.record.result["flagged"]]
        if flagged:
            self._queue_flagged(session, flagged, audited, now, source=source, actor=actor)
        found = self._items_of(session, sorted({r.key[0] for r in records if r.result["flagged"]}))
        return [_outcome(step, kind, found) for step, kind in zip(steps, kinds, strict=True)]

    @staticmethod
    def _known_versions(session: Session, ids: list[str]) -> dict[str, list[_RxRef]]:
        known: dict[str, list[_RxRef]] = {pid: [] for pid in ids}
        rx = PRESCRIPTIONS
        for batch in _batches(ids):
            for row_id, pid, version, digest in session.execute(
                select(rx.c.id, rx.c.prescription_id, rx.c.version, rx.c.content_hash)
                .where(rx.c.prescription_id.in_(batch))
                .order_by(rx.c.version)
            ):
                known[pid].append(_RxRef(version=version, content_hash=digest, id=row_id))
        return known

    def _insert_versions(self, session: Session, new: list[_Step], now: datetime, source: str) -> None:
        """Insert new versions in waves: a version's previous_id may be a row of this same call."""
        waiting = [(step.ref, _prescription_row(step, now, source)) for step in new]
        while waiting:
            ready = [(ref, row) for ref, row in waiting if ref.previous is None or ref.previous.id is not None]
            for ref, row in ready:
                if ref.previous is not None:
                    row["previous_id"] = ref.previous.id
            ids = self._insert_returning_ids(session, PRESCRIPTIONS, [row for _, row in ready])
            for (ref, _), row_id in zip(ready, ids, strict=True):
                ref.id = row_id
            waiting = [(ref, row) for ref, row in waiting if ref.id is None]

    @staticmethod
    def _audits_of(session: Session, row_ids: list[int]) -> dict[tuple[int, str], int]:
        audited: dict[tuple[int, str], int] = {}
        for batch in _batches(row_ids):
            for audit_id, row_id, rulebook in session.execute(
                select(AUDITS.c.id, AUDITS.c.prescription_row_id, AUDITS.c.rulebook).where(
                    AUDITS.c.prescription_row_id.in_(batch)
                )
            ):
                audited[(row_id, rulebook)] = audit_id
        return audited

    def _insert_audits(
        self, session: Session, fresh: list[_Step], audited: dict[tuple[int, str], int], now: datetime
    ) -> None:
        rows = [
            {
                "prescription_row_id": step.ref.id,
                "prescription_id": step.record.key[0],
                "version": step.ref.version,
                "audited_at": now,
                **step.record.result,
            }
            for step in fresh
        ]
        for step, audit_id in zip(fresh, self._insert_returning_ids(session, AUDITS, rows), strict=True):
            audited[step.audit_key] = audit_id

    def _queue_flagged(
        self,
        session: Session,
        flagged: list[_Step],
        audited: dict[tuple[int, str], int],
        now: datetime,
        *,
        source: str,
        actor: str,
    ) -> None:
        """Review items for the flagged audits, their findings and their ``submitted`` trail rows."""
        latest = self._latest_items(session, {step.record.key[0] for step in flagged if step.ref.previous})
        rows = []
        for step in flagged:
            previous_item = step.record.extra.get("previous_item_id")
            if previous_item is None and step.ref.previous is not None:
                previous_item = latest.get(step.record.key[0])
            rows.append(_item_row(step, audited[step.audit_key], previous_item, now, source))
        item_ids = self._insert_returning_ids(session, ITEMS, rows)
        findings = [
            {"item_id": item_id, "rule": rule, "category": category, "severity": severity}
            for step, item_id in zip(flagged, item_ids, strict=True)
            for rule, category, severity in sorted(set(step.record.findings))
        ]
        if findings:
            session.execute(insert(FINDINGS), findings)
        trail = [_submitted_trail(step, item_id, actor, now) for step, item_id in zip(flagged, item_ids, strict=True)]
        self._append(session, TRAIL, trail)

    @staticmethod
    def _latest_items(session: Session, prescription_ids: set[str]) -> dict[str, int]:
        if not prescription_ids:
            return {}
        rows = session.execute(
            select(ITEMS.c.prescription_id, func.max(ITEMS.c.id))
            .where(ITEMS.c.prescription_id.in_(sorted(prescription_ids)))
            .group_by(ITEMS.c.prescription_id)
        )
        return {pid: int(item_id) for pid, item_id in rows}

    @staticmethod
    def _items_of(session: Session, ids: list[str]) -> dict[tuple[str, int, str], int]:
        """Every item of these prescription ids (new or existing), by (id, version, rulebook)."""
        found: dict[tuple[str, int, str], int] = {}
        for batch in _batches(ids):
            for item_id, pid, version, rulebook in session.execute(
                select(ITEMS.c.id, ITEMS.c.prescription_id, ITEMS.c.version, ITEMS.c.rulebook).where(
                    ITEMS.c.prescription_id.in_(batch)
                )
            ):
                found[(pid, version, rulebook)] = item_id
        return found


def _outcome(step: _Step, kind: Kind, found: dict[tuple[str, int, str], int]) -> StoreOutcome:
    record = step.record
    flagged = bool(record.result["flagged"])
    key = (record.key[0], step.ref.version, record.result["rulebook"])
    return StoreOutcome(
        kind=kind,
        prescription_id=record.key[0],
        version=step.ref.version,
        flagged=flagged,
        item_id=found.get(key) if flagged else None,
    )
