"""Submitting: a prescription and its audit in, a review item out when flagged; a doctor's revision
of a returned prescription as a new, linked version; the batch bookkeeping replay needs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, insert
from sqlmodel import select

from rx_audit.contract import AuditResult, Prescription, parse_prescription
from rx_audit.errors import DatabaseError, NotFoundError, StateError
from rx_audit.queue.common import clean_text, utcnow
from rx_audit.queue.database import as_database_error, db_operation
from rx_audit.queue.prepare import as_payload, prepare_record
from rx_audit.queue.schemas import PreparedRecord, ReviewItem, StoreOutcome, Submission
from rx_audit.queue.storing import Storing
from rx_audit.queue.tables import AUDITS, ITEMS, PRESCRIPTIONS, REPLAY_ERRORS, ReviewItemRow


class Intake(Storing):
    """submit, submit_outcome, resubmit; stored_keys, replayed, record_errors (replay)."""

    def submit(
        self, prescription: Any, result: AuditResult | dict[str, Any], *, source: str = "his"
    ) -> ReviewItem | None:
        """Store a prescription and its audit; queue it when flagged. Idempotent on (id, content, rulebook).

        ``prescription`` is a dict (stored as received), JSON text or :class:`Prescription`. The same
        id with other content is a new version (the doctor's fix, another facility's numbering):
        stored, audited and queued. Returns the review item — new, or the existing one for a repeat
        of a flagged submission — or None when this audit is not flagged. To tell a repeat or a
        new version apart, use :meth:`submit_outcome`.
        """
        return self.submit_outcome(prescription, result, source=source).item

    @db_operation
    def submit_outcome(
        self, prescription: Any, result: AuditResult | dict[str, Any], *, source: str = "his"
    ) -> Submission:
        """:meth:`submit`, saying what happened: ``stored`` / ``new_version`` / ``repeat`` and the item."""
        record = prepare_record(prescription, result)
        outcome = self.store_prepared([record], source=source, actor=source)[0]
        return self._submission(outcome)

    @db_operation
    def submit_many(
        self,
        submissions: Sequence[tuple[Any, AuditResult | dict[str, Any]]],
        *,
        source: str = "his",
        parsed: Sequence[Prescription | None] | None = None,
    ) -> list[Submission | Exception]:
        """:meth:`submit_outcome` for several prescriptions in one transaction (a group commit).

        In order, a :class:`Submission` or the exception that record alone raised (an unreadable
        prescription, a result of another id): one bad record never fails the others. A failure
        of the database itself (:class:`~rx_audit.errors.DatabaseError`) raises for all — nothing
        of the call was stored. Records of one id are taken in order, as by :meth:`store_prepared`.
        ``parsed``: the prescriptions as already validated (by the audit), not validated again.
        """
        prepared: list[PreparedRecord | Exception] = []
        for index, (data, result) in enumerate(submissions):
            try:
                prepared.append(prepare_record(data, result, parsed=parsed[index] if parsed else None))
            except Exception as error:
                prepared.append(error)
        records = [entry for entry in prepared if not isinstance(entry, Exception)]
        stored = iter(self._store_isolated(records, source))
        outcomes = [entry if isinstance(entry, Exception) else next(stored) for entry in prepared]
        return self._submissions(outcomes)

    def _store_isolated(self, records: list[PreparedRecord], source: str) -> list[StoreOutcome | Exception]:
        """All in one transaction; if that fails for anything but the database, each alone."""
        if not records:
            return []
        try:
            return list(self.store_prepared(records, source=source, actor=source))
        except Exception as error:  # one record's problem: find it by storing them one by one
            self._raise_if_database(error)
        alone: list[StoreOutcome | Exception] = []
        for record in records:
            try:
                alone.extend(self.store_prepared([record], source=source, actor=source))
            except Exception as error:
                self._raise_if_database(error)
                alone.append(error)
        return alone

    def _raise_if_database(self, error: Exception) -> None:
        """A failure of the database (locked, gone, read-only) is everyone's: raised, and retried by
        the outer operation; a constraint or a bug is the record's own."""
        if isinstance(error, DatabaseError) or as_database_error(error, self.url) is not None:
            raise error

    def _submissions(self, outcomes: Sequence[StoreOutcome | Exception]) -> list[Submission | Exception]:
        """Submissions with their review items, read in one session."""
        wanted = [o.item_id for o in outcomes if isinstance(o, StoreOutcome) and o.item_id is not None]
        items: dict[int, ReviewItem] = {}
        if wanted:
            with self._read() as session:
                items = {item_id: self._public(self._item_row(session, item_id)) for item_id in wanted}
        return [
            outcome if isinstance(outcome, Exception) else Submission(
                kind=outcome.kind, prescription_id=outcome.prescription_id, version=outcome.version,
                flagged=outcome.flagged, item=items.get(outcome.item_id) if outcome.item_id is not None else None,
            )
            for outcome in outcomes
        ]

    def _submission(self, outcome: StoreOutcome) -> Submission:
        item = None
        if outcome.item_id is not None:
            with self._read() as session:
                item = self._public(self._item_row(session, outcome.item_id))
        return Submission(
            kind=outcome.kind,
            prescription_id=outcome.prescription_id,
            version=outcome.version,
            flagged=outcome.flagged,
            item=item,
        )

    @db_operation
    def resubmit(
        self, prescription_v2: Any, result: AuditResult | dict[str, Any], *, doctor_id: str
    ) -> ReviewItem | None:
        """The doctor's revision of a returned prescription: a new version, re-audited, linked.

        The latest item of the prescription must be ``returned``. The version is the payload's
        ``version`` when it is newer, else the latest version + 1. Returns the new item, or None
        when the revision is no longer flagged (the return is then resolved, logged in the trail).
        """
        rx = parse_prescription(prescription_v2)
        latest, max_version = self._latest_version(rx.id)
        payload = as_payload(prescription_v2, rx)
        wanted = payload.get("version")
        newer = isinstance(wanted, int) and wanted > max_version
        version = wanted if newer and isinstance(wanted, int) else max_version + 1
        if latest.status != "returned":
            if isinstance(wanted, int) and not newer:
                existing = self._find_item(rx.id, wanted, result)
                if existing is not None:
                    return existing  # a retried resubmit: idempotent
            raise StateError(
                f"处方 {rx.id} 当前状态为 {latest.status}，不能重新提交 (only a returned item can be revised)"
            )
        record = prepare_record(payload, result, version=version)
        record.extra.update(previous_id=latest.prescription_row_id, previous_item_id=latest.id)
        outcome = self.store_prepared([record], source="resubmit", actor=doctor_id)[0]
        item = self._submission(outcome).item
        with self._write() as session:
            self._trail(
                session,
                item_id=latest.id,
                prescription_id=latest.prescription_id,
                version=latest.version,
                actor=doctor_id,
                action="resubmitted",
                from_status="returned",
                to_status="returned",
                reason_code=None,
                reason=(
                    f"新版本 v{version} → 审方任务 {item.id}" if item else f"新版本 v{version} 审核通过 (not flagged)"
                ),
                at=utcnow(),
            )
        return item

    def _latest_version(self, prescription_id: str) -> tuple[ReviewItemRow, int]:
        """The latest review item of a prescription id and its highest stored version."""
        with self._read() as session:
            latest = session.exec(
                select(ReviewItemRow)
                .where(ITEMS.c.prescription_id == prescription_id)
                .order_by(ITEMS.c.version.desc(), ITEMS.c.id.desc())
            ).first()
            max_version = session.execute(
                select(func.max(PRESCRIPTIONS.c.version)).where(PRESCRIPTIONS.c.prescription_id == prescription_id)
            ).scalar_one()
        if latest is None:
            raise NotFoundError(f"处方 {prescription_id} 没有审方记录 (nothing to resubmit)")
        return latest, int(max_version or 0)

    def _find_item(self, prescription_id: str, version: int, result: Any) -> ReviewItem | None:
        rulebook = result.rulebook if isinstance(result, AuditResult) else result.get("rulebook")
        with self._read() as session:
            row = session.exec(
                select(ReviewItemRow).where(
                    ReviewItemRow.prescription_id == prescription_id,
                    ReviewItemRow.version == version,
                    ReviewItemRow.rulebook == rulebook,
                )
            ).first()
        return self._public(row) if row else None

    @db_operation
    def stored_keys(self, keys: Iterable[tuple[str, int]], rulebook: str) -> set[tuple[str, int]]:
        """Which (prescription id, version) of ``keys`` already have an audit by ``rulebook``."""
        keys = [(clean_text(pid), version) for pid, version in keys]
        ids = sorted({key[0] for key in keys})
        found: set[tuple[str, int]] = set()
        ar = AUDITS
        with self._read() as session:
            for start in range(0, len(ids), 500):
                for pid, version in session.execute(
                    select(ar.c.prescription_id, ar.c.version).where(
                        ar.c.prescription_id.in_(ids[start : start + 500]), ar.c.rulebook == rulebook
                    )
                ):
                    found.add((pid, version))
        return found & set(keys)

    @db_operation
    def replayed(self, source: str, rulebook: str, records: Iterable[tuple[str, str, int]]) -> set[int]:
        """Of ``(prescription id, content hash, line)`` of a batch, the lines a previous run of the same
        batch (``source``) already stored and audited with ``rulebook`` — what a resumed replay skips."""
        records = [(clean_text(pid), digest, line) for pid, digest, line in records]
        ids = sorted({pid for pid, _, _ in records})
        lines = sorted({line for _, _, line in records})
        rx = PRESCRIPTIONS
        ar = AUDITS
        joined = rx.join(ar, ar.c.prescription_row_id == rx.c.id)
        by_line: set[tuple[int, str | None]] = set()
        legacy: set[tuple[str, str | None]] = set()
        with self._read() as session:
            # By line and content: the id as stored is the engine's normalised one, not the raw text's.
            for start in range(0, len(lines), 500):
                for line, digest in session.execute(
                    select(rx.c.source_line, rx.c.content_hash)
                    .select_from(joined)
                    .where(
                        rx.c.source == source,
                        rx.c.source_line.in_(lines[start : start + 500]),
                        ar.c.rulebook == rulebook,
                    )
                ):
                    by_line.add((line, digest))
            # A row without a line was stored before lines were kept: skip on id and content.
            for start in range(0, len(ids), 500):
                for pid, digest in session.execute(
                    select(rx.c.prescription_id, rx.c.content_hash)
                    .select_from(joined)
                    .where(
                        rx.c.source == source,
                        rx.c.source_line.is_(None),
                        rx.c.prescription_id.in_(ids[start : start + 500]),
                        ar.c.rulebook == rulebook,
                    )
                ):
                    legacy.add((pid, digest))
        return {line for pid, digest, line in records if (line, digest) in by_line or (pid, digest) in legacy}

    @db_operation
    def record_errors(self, source: str, errors: Sequence[Any]) -> int:
        """Store a batch's unreadable records (objects with line, id, field, error); repeats are ignored."""
        if not errors:
            return 0
        table = REPLAY_ERRORS
        now = utcnow()
        with self._write() as session:
            lines = sorted({e.line or 0 for e in errors})
            known = {
                line
                for (line,) in session.execute(
                    select(table.c.line).where(table.c.source == source, table.c.line.in_(lines))
                )
            }
            rows, seen = [], set(known)
            for error in errors:
                line = error.line or 0
                if line in seen:
                    continue
                seen.add(line)
                rows.append(
                    clean_text(
                        {
                            "source": source,
                            "line": line,
                            "record_id": None if error.id is None else str(error.id),
                            "field": error.field,
                            "error": str(error.error),
                            "at": now,
                        }
                    )
                )
            if rows:
                session.execute(insert(table), rows)
            return len(rows)
