"""``POST /v1/audit``: one prescription (CONTRACT §1) in, its result (§2) out; stored in the review
queue, and queued for a pharmacist when flagged — in the same call.

The answer adds to §2: ``version`` and ``submission`` (``stored``, ``new_version`` — the same id with
other content, the doctor's fix — or ``repeat``: the same content again, stored once), and when
flagged ``review: {"status": …, "item": "…"}`` (``pending`` for a new item; a repeat says where its
item is now).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from rx_audit import PrescriptionError, parse_prescription
from rx_audit.server.auth import ApiKey
from rx_audit.server.context import Caller, Services, json_object, read_body, services
from rx_audit.server.problems import Problem

router = APIRouter()
JSON_TYPES = ("application/json", "")


@router.post("/v1/audit")
async def audit(request: Request, key: Caller) -> JSONResponse:
    found = services(request)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/fhir+json":
        raise Problem(415, "FHIR R4 Bundles are not accepted yet; send a CONTRACT §1 prescription as application/json",
                      kind="unsupported-media-type")  # fmt: skip
    if media not in JSON_TYPES:
        raise Problem(415, "Content-Type must be application/json", kind="unsupported-media-type")
    body = await read_body(request, found.settings.max_body_bytes)
    record = json_object(body, "prescription")
    try:
        answer = await run_in_threadpool(_audit_and_queue, found, record, key)
    except PrescriptionError:
        found.metrics.audits.labels("invalid").inc()
        raise
    found.metrics.audits.labels(answer["outcome"]).inc()
    request.state.prescription_id = answer["result"]["id"]
    request.state.outcome = answer["outcome"]
    return JSONResponse(answer["result"])


def _audit_and_queue(found: Services, record: dict[str, Any], key: ApiKey) -> dict[str, Any]:
    prescription = parse_prescription(record)
    facility = prescription.facility.id
    if not facility:
        raise PrescriptionError(prescription.id, "facility.id", "required: keys are bound to facilities")
    if facility not in key.facilities:
        raise Problem(403, f"this key may not submit for facility {facility!r}", kind="forbidden-facility",
                      field="facility.id")  # fmt: skip
    result = found.auditor.audit(record)
    submission = found.queue.submit_outcome(record, result, source="his")
    body: dict[str, Any] = result.to_contract()
    body["version"] = submission.version
    body["submission"] = submission.kind
    if submission.item is not None:
        body["review"] = {"status": submission.item.status, "item": str(submission.item.id)}
    return {"result": body, "outcome": submission.outcome}
