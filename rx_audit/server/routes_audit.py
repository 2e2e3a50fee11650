"""``POST /v1/audit``: one prescription (CONTRACT §1) in, its result (§2) out; stored in the review
queue, and queued for a pharmacist when flagged — in the same call.

The answer adds to §2: ``version`` and ``submission`` (``stored``, ``new_version`` — the same id with
other content, the doctor's fix — or ``repeat``: the same content again, stored once), and when
flagged ``review: {"status": …, "item": "…"}`` (``pending`` for a new item; a repeat says where its
item is now).

A FHIR R4 ``Bundle`` sent as ``application/fhir+json`` is mapped by
:func:`rx_audit.adapters.fhir.prescription_from_bundle` (the facility is the key's, when the key has
exactly one; else 422 naming ``facility``), audited and queued the same way, and answered as
``application/fhir+json``: a ``Bundle`` (type ``collection``) of one ``DetectedIssue`` per finding,
then one ``Parameters`` resource (a Bundle carries no extensions) with the §2 summary and the
queue's answer: ``id``, ``flagged``, ``severity``, ``rulebook``, ``version``, ``submission`` and,
when queued, ``review-status`` and ``review-item``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from rx_audit import AuditResult, Prescription, PrescriptionError, Submission, parse_prescription
from rx_audit.server.auth import ApiKey
from rx_audit.server.context import Caller, Services, in_worker_thread, json_object, read_body, services
from rx_audit.server.problems import Problem

router = APIRouter()
JSON_TYPES = ("application/json", "")
FHIR_JSON = "application/fhir+json"


@router.post("/v1/audit")
async def audit(request: Request, key: Caller) -> JSONResponse:
    found = services(request)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in (*JSON_TYPES, FHIR_JSON):
        raise Problem(415, "Content-Type must be application/json or application/fhir+json",
                      kind="unsupported-media-type")  # fmt: skip
    body = await read_body(request, found.settings.max_body_bytes)
    fhir = media == FHIR_JSON
    document = json_object(body, "Bundle" if fhir else "prescription")
    if fhir and "resourceType" not in document:  # not FHIR at all (e.g. a §1 prescription mislabelled)
        raise Problem(415, "application/fhir+json: not a FHIR resource (no resourceType); send a FHIR R4 Bundle, "
                      "or a CONTRACT §1 prescription as application/json", kind="unsupported-media-type")  # fmt: skip
    try:
        record = await in_worker_thread(found, _bundle_record, document, key) if fhir else document
        # The audit in a worker thread (CPU: a few at once); the store joins the group commit.
        prescription, result = await in_worker_thread(found, audit_checked, found, record, key)
        answer = answer_of(result, await found.store.submit(record, result, prescription))
        if fhir:
            answer["fhir"] = await in_worker_thread(found, _fhir_answer, answer, record, document)
    except PrescriptionError:
        found.metrics.audits.labels("invalid").inc()
        raise
    found.metrics.audits.labels(answer["outcome"]).inc()
    request.state.prescription_id = answer["result"]["id"]
    request.state.outcome = answer["outcome"]
    if fhir:
        return JSONResponse(answer["fhir"], media_type=FHIR_JSON)
    return JSONResponse(answer["result"])


def key_facility(key: ApiKey) -> dict[str, str]:
    """The facility of a key bound to exactly one (FHIR and CDS Hooks carry no CONTRACT facility)."""
    if len(key.facilities) != 1:
        raise Problem(422, "this key is bound to several facilities: the facility of a FHIR request cannot be "
                      "chosen; use a key bound to one facility", kind="invalid-field", field="facility")  # fmt: skip
    return {"id": next(iter(key.facilities))}


def audit_checked(found: Services, record: dict[str, Any], key: ApiKey) -> tuple[Prescription, AuditResult]:
    """Audit ``record`` once its facility is one the key may submit for: the prescription as
    validated, and its result."""
    prescription = parse_prescription(record)
    facility = prescription.facility.id
    if not facility:
        raise PrescriptionError(prescription.id, "facility.id", "required: keys are bound to facilities")
    if facility not in key.facilities:
        raise Problem(403, f"this key may not submit for facility {facility!r}", kind="forbidden-facility",
                      field="facility.id")  # fmt: skip
    return prescription, found.auditor.audit(prescription)


def audit_and_queue(found: Services, record: dict[str, Any], key: ApiKey) -> dict[str, Any]:
    """Audit ``record`` and store it (queued when flagged): ``result`` (the answer), ``audit`` (the
    :class:`AuditResult`), ``outcome`` (for metrics and the access log)."""
    _, result = audit_checked(found, record, key)
    return answer_of(result, found.queue.submit_outcome(record, result, source="his"))


def answer_of(result: AuditResult, submission: Submission) -> dict[str, Any]:
    body: dict[str, Any] = result.to_contract()
    body["version"] = submission.version
    body["submission"] = submission.kind
    if submission.item is not None:
        body["review"] = {"status": submission.item.status, "item": str(submission.item.id)}
    return {"result": body, "audit": result, "outcome": submission.outcome}


def _bundle_record(bundle: dict[str, Any], key: ApiKey) -> dict[str, Any]:
    from rx_audit.adapters.fhir import prescription_from_bundle

    return prescription_from_bundle(bundle, facility=key_facility(key))


def _fhir_answer(answer: dict[str, Any], record: dict[str, Any], bundle: dict[str, Any]) -> dict[str, Any]:
    from rx_audit.adapters.fhir import detected_issues

    patient_id = (record.get("patient") or {}).get("id")
    issues = detected_issues(answer["audit"], bundle, patient=f"Patient/{patient_id}" if patient_id else None)
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": issue} for issue in issues] + [{"resource": _summary(answer["result"])}],
    }


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """The §2 summary and the queue's answer as a FHIR ``Parameters`` resource."""
    parameters: list[dict[str, Any]] = [
        {"name": "id", "valueString": str(result["id"])},
        {"name": "flagged", "valueBoolean": bool(result["flagged"])},
    ]
    if result.get("severity"):
        parameters.append({"name": "severity", "valueCode": str(result["severity"])})
    parameters += [
        {"name": "rulebook", "valueString": str(result["rulebook"])},
        {"name": "version", "valueInteger": int(result["version"])},
        {"name": "submission", "valueCode": str(result["submission"])},
    ]
    if "review" in result:
        parameters += [
            {"name": "review-status", "valueCode": str(result["review"]["status"])},
            {"name": "review-item", "valueString": str(result["review"]["item"])},
        ]
    return {"resourceType": "Parameters", "id": "rx-audit-result", "parameter": parameters}
