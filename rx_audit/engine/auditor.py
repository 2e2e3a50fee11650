"""The Auditor: load a rulebook once, audit prescriptions one at a time or in batches, hot-reload.

The audit is a straight pipeline — parse (:func:`rx_audit.contract.parse_prescription`) →
resolve (:mod:`.resolve`) → facts (:mod:`.facts`) → evaluate (:mod:`.durable`) → explain
(:mod:`.explain`) — each stage testable and timed on its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rx_audit.contract import AuditResult, RecordError, parse_prescription
from rx_audit.engine.durable import DURABLE_LOCK, Registered
from rx_audit.engine.explain import explain, unaudited
from rx_audit.engine.facts import facts_for
from rx_audit.engine.resolve import resolve
from rx_audit.errors import PrescriptionError, RxAuditError
from rx_audit.rulebook import Rulebook, load_rulebook

logger = logging.getLogger("rx_audit")


class Auditor:
    """Loads a rulebook once and audits prescriptions; thread-safe; hot-reloadable.

    >>> auditor = Auditor.from_path("rules")
    >>> result = auditor.audit({"id": "RX1", "patient": {...}, "items": [...]})
    >>> result.flagged, [f.rule for f in result.findings]
    """

    def __init__(self, rulebook: Rulebook):
        self._current = Registered(rulebook)
        self._reload_lock = threading.Lock()

    @classmethod
    def from_path(cls, path: str | Path = "rules") -> Auditor:
        return cls(load_rulebook(path))

    @property
    def rulebook(self) -> Rulebook:
        return self._current.rulebook

    @property
    def rulebook_hash(self) -> str:
        return self._current.rulebook.hash

    def reload(self, path: str | Path | None = None) -> str:
        """Load a new rulebook version and swap it in; audits in flight finish on the old one.

        The new rules are compiled and registered before the swap, so a rulebook with errors
        raises :class:`~rx_audit.errors.RulebookError` and the live version stays.
        """
        with self._reload_lock:
            rulebook = load_rulebook(path if path is not None else self._current.rulebook.root)
            fresh = Registered(rulebook)
            with DURABLE_LOCK:
                old, self._current = self._current, fresh
                old.close()
            return rulebook.hash

    def close(self) -> None:
        self._current.close()

    # --- auditing ------------------------------------------------------------------------------

    def audit(self, record: Any) -> AuditResult:
        """Audit one prescription (dict, JSON text or :class:`Prescription`).

        Raises :class:`~rx_audit.errors.PrescriptionError` for input that cannot be read; never
        for a problem of the rules: those become ``completeness`` findings.
        """
        prescription = parse_prescription(record)
        while True:
            registered = self._current
            try:
                facts = facts_for(resolve(prescription, registered.rulebook), registered.rulebook)
                with DURABLE_LOCK:
                    if registered.closed:
                        continue  # swapped by a reload between normalising and evaluating
                    fired, failures = registered.evaluate(facts.batches)
                return explain(prescription, registered.rulebook, facts, fired, failures)
            except Exception as error:
                # A defect of ours must not release a prescription nobody audited, nor block
                # prescribing: the prescription is held with the error, for a pharmacist.
                logger.exception("audit of %s failed", prescription.id)
                return unaudited(prescription, registered.rulebook, f"{type(error).__name__}: {error}")

    def audit_batch(self, records: Iterable[Any]) -> list[AuditResult | RecordError]:
        """Audit each record; a record that cannot be read gets a :class:`RecordError`, the rest go on."""
        return list(self.audit_stream(enumerate(records, start=1)))

    def audit_stream(self, numbered: Iterable[tuple[int, Any]]) -> Iterator[AuditResult | RecordError]:
        """Like :meth:`audit_batch`, lazily, for ``(line, record)`` pairs from :func:`rx_audit.io.iter_records`."""
        for line, record in numbered:
            if isinstance(record, RecordError):
                yield record
                continue
            try:
                yield self.audit(record)
            except PrescriptionError as error:
                yield RecordError(id=error.prescription_id, line=line, field=error.field, error=error.message)
            except Exception as error:  # one record never stops a batch
                record_id = record.get("id") if isinstance(record, dict) else None
                message = str(error) if isinstance(error, RxAuditError) else f"{type(error).__name__}: {error}"
                yield RecordError(id=str(record_id)[:200] if record_id else None, line=line, error=message[:500])
