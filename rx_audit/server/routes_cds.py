"""CDS Hooks 2.0 (https://cds-hooks.hl7.org/2.0/): ``GET /cds-services`` (discovery),
``POST /cds-services/rx-audit-order-sign`` (the ``order-sign`` hook) and its ``/feedback``.

The hook's draft orders are mapped by :func:`rx_audit.adapters.cds_hooks.prescription_from_order_sign`
(the facility is the key's; a key bound to several facilities is 422 naming ``facility``), audited and
stored exactly as ``POST /v1/audit`` does (queued for the pharmacist when flagged), and answered with
one card per finding; ``overrideReasons`` are the queue's coded approve reasons.

Feedback: each card uuid is stored with its prescription, version, rules, facility and the signing
clinician (``context.userId``) in the queue's database (``ReviewQueue.remember_cards``), so feedback
reaching any worker or instance is understood; a card not known, or of another facility than the
key's, is answered ``unknown-card``. ``overridden`` with a reason, when the prescription is
``returned``, is recorded as 双签 (``ReviewQueue.double_sign``; doctor = the hook's ``userId``);
every feedback entry, ``accepted`` included, is stored (``ReviewQueue.note_feedback``, read back with
``cds_feedback``) and logged as one JSON line on the ``rx_audit.server`` logger. Authentication: the service's API keys
(``Authorization: Bearer``), or the EHR's CDS Hooks JWT verified against its JWKS where issuers are
configured (:mod:`rx_audit.server.cds_jwt`).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from rx_audit import PrescriptionError
from rx_audit.server.auth import ApiKey
from rx_audit.server.context import Caller, Services, in_worker_thread, json_object, read_body, services
from rx_audit.server.problems import Problem
from rx_audit.server.routes_audit import audit_and_queue, key_facility
from rx_audit.server.state import prescription_state

router = APIRouter()
log = logging.getLogger("rx_audit.server")
SERVICE_PATH = "/cds-services/rx-audit-order-sign"
@router.get("/cds-services")
async def discovery_endpoint(key: Caller) -> JSONResponse:
    from rx_audit.adapters.cds_hooks import discovery

    return JSONResponse(discovery())


@router.post(SERVICE_PATH)
async def order_sign(request: Request, key: Caller) -> JSONResponse:
    found = services(request)
    body = json_object(await read_body(request, found.settings.max_body_bytes), "order-sign request")
    _check_shape(body)
    try:
        answer = await in_worker_thread(found, _order_sign, found, body, key)
    except PrescriptionError:
        found.metrics.audits.labels("invalid").inc()
        raise
    found.metrics.audits.labels(answer["outcome"]).inc()
    request.state.prescription_id = answer["result"]["id"]
    request.state.outcome = answer["outcome"]
    return JSONResponse(answer["cards"])


def _check_shape(hook: dict[str, Any]) -> None:
    """The containers the adapter walks must be what CDS Hooks says they are (a list where an object
    belongs was a 500, found by the schema's property tests): 422 naming the field instead."""
    prefetch = hook.get("prefetch")
    if prefetch is not None and not isinstance(prefetch, dict):
        raise Problem(422, "prefetch: 应为对象 (must be an object)", kind="invalid-field", field="prefetch")
    context = hook.get("context")
    orders = context.get("draftOrders") if isinstance(context, dict) else None
    entries = orders.get("entry") if isinstance(orders, dict) else None
    if entries is not None and not isinstance(entries, list):
        raise Problem(422, "context.draftOrders.entry: 应为数组 (must be an array)", kind="invalid-field",
                      field="context.draftOrders.entry")  # fmt: skip


def _order_sign(found: Services, hook: dict[str, Any], key: ApiKey) -> dict[str, Any]:
    from rx_audit.adapters.cds_hooks import card_index, cards, prescription_from_order_sign

    facility = key_facility(key)
    record = prescription_from_order_sign(hook, facility=facility)
    answer = audit_and_queue(found, record, key)
    response = cards(answer["audit"], found.queue.reasons("approve"))
    context = hook.get("context")
    user = context.get("userId") if isinstance(context, dict) else None
    index = card_index(answer["audit"], response)
    for entry in index.values():
        entry.update(facility=facility["id"], user=str(user) if user else None,
                     version=answer["result"]["version"])  # fmt: skip
    found.queue.remember_cards(index)
    answer["cards"] = response
    return answer


@router.post(SERVICE_PATH + "/feedback")
async def feedback(request: Request, key: Caller) -> JSONResponse:
    from rx_audit.adapters.cds_hooks import feedback_outcome

    found = services(request)
    body = json_object(await read_body(request, found.settings.max_body_bytes), "feedback")
    records = feedback_outcome(body)
    results = await run_in_threadpool(_record_feedback, found, records, key)
    request.state.outcome = "feedback"
    return JSONResponse({"feedback": results})


def _record_feedback(
    found: Services, records: list[dict[str, Any]], key: ApiKey
) -> list[dict[str, Any]]:
    scope = sorted(key.facilities)
    out: list[dict[str, Any]] = []
    for record in records:
        entry = found.queue.card(record["card"], scope)
        if entry is None:
            out.append({"card": record["card"], "outcome": record["outcome"], "recorded": "unknown-card"})
            continue
        recorded = "noted"
        reason = _reason_text(record)
        if record["outcome"] == "overridden" and reason and entry.get("user"):
            state = prescription_state(found.queue, entry["prescription"], scope)
            if state["status"] == "returned":
                found.queue.double_sign(entry["prescription"], entry["user"], reason, scope=scope)
                recorded = "double_signed"
        noted = {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "key_id": key.id,
            "card": record["card"],
            "prescription": entry["prescription"],
            "facility": entry["facility"],
            "rules": entry["rules"],
            "outcome": record["outcome"],
            "reason_code": record["reason_code"],
            "accepted_suggestions": record["accepted_suggestions"],
            "recorded": recorded,
        }
        found.queue.note_feedback({**noted, "reason": reason})
        log.info(json.dumps({"event": "cds_feedback", **noted}, ensure_ascii=False))
        out.append({"card": record["card"], "outcome": record["outcome"], "prescription": entry["prescription"],
                    "recorded": recorded})  # fmt: skip
    return out


def _reason_text(record: dict[str, Any]) -> str | None:
    """The override reason as the 双签 reason: ``display (code): comment``, whatever of it was given."""
    coded = " ".join(part for part in (record["reason_display"], f"({record['reason_code']})"
                                       if record["reason_code"] else None) if part)  # fmt: skip
    text = "：".join(part for part in (coded, record["comment"]) if part)
    return text.strip() or None
