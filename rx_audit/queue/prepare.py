"""Preparing a record: validate a prescription and its audit and compute the rows to store — pure
and picklable, shared by :meth:`ReviewQueue.submit` and the replay workers."""

from __future__ import annotations

import json
from typing import Any

from rx_audit.contract import AuditResult, Prescription, parse_prescription
from rx_audit.errors import QueueError
from rx_audit.queue.common import as_day, clean_text, content_hash, utc
from rx_audit.queue.schemas import PreparedRecord


def as_payload(data: Any, rx: Prescription) -> dict[str, Any]:
    if isinstance(data, dict):
        return data
    if isinstance(data, (str, bytes)):
        loaded = json.loads(data)
        if isinstance(loaded, dict):
            return loaded
    return rx.model_dump(mode="json", exclude_none=True)


def prepare_record(
    data: Any,
    result: AuditResult | dict[str, Any],
    *,
    version: int | None = None,
    parsed: Prescription | None = None,
    raw: str | None = None,
) -> PreparedRecord:
    """Validate ``data`` and compute the rows to store; raises PrescriptionError / QueueError.

    JSON text (``data`` or ``raw``) is stored as received; a dict is stored as JSON; ``parsed``
    saves validating the prescription twice when the caller already has it.
    """
    rx = parsed if parsed is not None else parse_prescription(data)
    payload = as_payload(data, rx)
    explicit = version is not None
    if not isinstance(result, AuditResult):
        result = AuditResult.model_validate(result)
    if result.id != rx.id:
        raise QueueError(f"审核结果 {result.id} 不属于处方 {rx.id} (result does not belong to the prescription)")
    if version is None:
        given = payload.get("version", 1)
        try:
            version = int(given)
        except (TypeError, ValueError):
            raise QueueError(f"处方 {rx.id}: version {given!r} 不是整数 (not an integer)") from None
    issued = rx.issued_at
    severity = result.severity.value if result.severity is not None else None
    findings = clean_text([(f.rule, str(f.category), str(f.severity)) for f in result.findings])
    columns = {
        "prescription_id": rx.id,
        "version": version,
        "visit_type": rx.visit_type,
        "facility_id": rx.facility.id,
        "facility_name": rx.facility.name,
        "department": rx.department,
        "prescriber_id": rx.prescriber.id,
        "prescriber_name": rx.prescriber.name,
        "patient_id": rx.patient.id,
        "issued_at": utc(issued) if issued is not None else None,
        "day": as_day(issued),
    }
    text_payload = (
        raw.strip()
        if raw is not None
        else data.strip()
        if isinstance(data, str)
        else json.dumps(payload, ensure_ascii=False, default=str)
    )
    return PreparedRecord(
        prescription=clean_text(columns),
        payload=clean_text(text_payload),
        result={
            "rulebook": clean_text(result.rulebook),
            "flagged": bool(result.flagged),
            "severity": severity,
            "findings": json.dumps([f.to_contract() for f in result.findings], ensure_ascii=False, default=str),
        },
        findings=[tuple(f) for f in findings],
        extra={"explicit_version": explicit},
        content_hash=content_hash(payload),
    )
