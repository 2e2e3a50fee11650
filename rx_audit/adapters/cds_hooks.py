"""CDS Hooks 2.0 (https://cds-hooks.hl7.org/2.0/) as pure functions: discovery, the ``order-sign``
request → a CONTRACT prescription, an audit result → cards, a feedback POST → trail records.

No web server here: ``rx-audit serve`` calls these. This module imports neither the queue nor a web
stack; the queue's coded approve reasons (``rx_audit.queue.load_reasons()``) are passed in.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from rx_audit.adapters.fhir import prescription_from_bundle
from rx_audit.contract import CATEGORY_LABELS_ZH, AuditResult, Finding
from rx_audit.errors import PrescriptionError

SERVICE_ID = "rx-audit-order-sign"
HOOK = "order-sign"
OVERRIDE_REASON_SYSTEM = "https://rx-audit.org/fhir/CodeSystem/override-reason"
CATEGORY_SYSTEM = "https://rx-audit.org/fhir/CodeSystem/finding-category"
SUMMARY_LIMIT = 140
_EGFR_CODES = "33914-3,48642-3,48643-3,62238-1,98979-8"
PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}",
    "allergies": "AllergyIntolerance?patient={{context.patientId}}",
    "egfr": f"Observation?patient={{{{context.patientId}}}}&code={_EGFR_CODES}&_sort=-date&_count=1",
    "weight": "Observation?patient={{context.patientId}}&code=29463-7&_sort=-date&_count=1",
}
ORDER_SIGN_SERVICE = {
    "hook": HOOK,
    "id": SERVICE_ID,
    "title": "rx_audit 处方前置审核 (prescription audit)",
    "description": "Audits the orders being signed against the rulebook (医疗机构处方审核规范): dose, route, "
    "interactions, contraindications, duplicates, duration, legality; critical findings block.",
    "prefetch": PREFETCH,
    "usageRequirements": "Send context.draftOrders as a Bundle of MedicationRequests; prefetch or FHIR access "
    "for the patient's conditions, allergies and latest eGFR and weight, else the audit reports them missing.",
}


def discovery(services: Iterable[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The body of ``GET /cds-services``: the ``order-sign`` service, then any ``services`` given."""
    listed = [dict(ORDER_SIGN_SERVICE)]
    listed += [dict(service) for service in services or () if service.get("id") != SERVICE_ID]
    return {"services": listed}


# --------------------------------------------------------------------------- request → prescription


def _prefetched(prefetch: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Prefetched resources, searchset Bundles flattened; null keys and OperationOutcomes skipped."""
    out: list[dict[str, Any]] = []
    for value in (prefetch or {}).values():
        if not isinstance(value, dict):
            continue  # null: the client has no data for that key
        if value.get("resourceType") == "Bundle":
            for entry in value.get("entry") or []:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(resource, dict) and resource.get("resourceType") != "OperationOutcome":
                    out.append({"fullUrl": entry.get("fullUrl"), "resource": resource})
        elif value.get("resourceType") not in (None, "OperationOutcome"):
            out.append({"resource": value})
    return [{k: v for k, v in entry.items() if v is not None} for entry in out]


def _requester(user_id: Any) -> dict[str, Any] | None:
    if isinstance(user_id, str) and user_id.split("/")[0] in ("Practitioner", "PractitionerRole"):
        return {"reference": user_id}
    return None


def prescription_from_order_sign(
    request: Mapping[str, Any],
    *,
    facility: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An ``order-sign`` hook request → a CONTRACT §1 prescription (via :func:`prescription_from_bundle`).

    The MedicationRequests of ``context.draftOrders`` are the items; the prefetch (patient,
    conditions, allergies, eGFR, weight) fills the patient; ``context.userId`` is the prescriber
    where the orders name no requester. The id is the orders' group identifier, else the
    draftOrders Bundle's id, else the ``hookInstance``.
    """
    hook_instance = request.get("hookInstance")
    context = request.get("context")
    if request.get("hook") != HOOK:
        raise PrescriptionError(hook_instance, "hook", f"不是 order-sign (hook {request.get('hook')!r})")
    if not isinstance(context, dict) or not isinstance(context.get("draftOrders"), dict):
        raise PrescriptionError(hook_instance, "context.draftOrders", "缺少 draftOrders Bundle (no draftOrders)")
    orders = context["draftOrders"]
    patient_id = context.get("patientId")
    entries: list[dict[str, Any]] = []
    for entry in orders.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "MedicationRequest":
            continue  # other draft orders (ServiceRequest…) are not prescriptions
        resource = dict(resource)
        if patient_id and not resource.get("subject"):
            resource["subject"] = {"reference": f"Patient/{patient_id}"}
        if not resource.get("requester") and _requester(context.get("userId")):
            resource["requester"] = _requester(context.get("userId"))
        entries.append({**entry, "resource": resource})
    bundle = {
        "resourceType": "Bundle",
        "id": str(orders.get("id") or hook_instance or "order-sign"),
        "type": "collection",
        "entry": entries + _prefetched(request.get("prefetch")),
    }
    if orders.get("identifier"):
        bundle["identifier"] = orders["identifier"]
    record = prescription_from_bundle(bundle, facility=facility)
    if patient_id and not record["patient"].get("id"):
        record["patient"]["id"] = str(patient_id)
    if hook_instance:
        record["cds_hook_instance"] = str(hook_instance)
    return record


# --------------------------------------------------------------------------- result → cards


def truncate(text: str, limit: int = SUMMARY_LIMIT) -> str:
    """``text`` cut to at most ``limit`` characters, at a clean boundary, with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    for mark in ("。", "；", "，", "：", "; ", ", ", " "):
        at = cut.rfind(mark)
        if at >= limit // 2:
            cut = cut[:at]
            break
    return cut.rstrip("，、；：,;: ") + "…"


def override_reasons(reasons: Any) -> list[dict[str, str]]:
    """The queue's approve reasons as CDS Hooks Codings (``load_reasons()`` or a list of them)."""
    values = reasons.values() if isinstance(reasons, Mapping) else reasons or []
    out = []
    for reason in values:
        get = reason.get if isinstance(reason, Mapping) else lambda key, r=reason: getattr(r, key, None)
        if get("kind") not in (None, "approve"):
            continue
        out.append({"code": str(get("code")), "system": OVERRIDE_REASON_SYSTEM, "display": str(get("label"))})
    return out


def _detail(finding: Finding) -> str:
    category = str(finding.category)
    lines = [
        f"**{finding.message}**",
        "",
        f"- 审核要点 (category): {CATEGORY_LABELS_ZH.get(category, category)} (`{category}`)",
        f"- 规则 (rule): `{finding.rule}` — `{finding.source}`",
    ]
    if finding.item is not None:
        lines.append(f"- 药品条目 (item): `{finding.item}`")
    if finding.reference:
        lines.append(f"- 依据 (reference): {finding.reference}")
    for key, value in finding.evidence.items():
        shown = value if isinstance(value, (str, int, float)) else json.dumps(value, ensure_ascii=False)
        lines.append(f"- {key}: {shown}")
    return "\n".join(lines)


def _suggestion(finding: Finding) -> dict[str, Any] | None:
    """A text suggestion where a dose or duration finding carries its limit; else none."""
    limit, unit, category = finding.evidence.get("limit"), finding.evidence.get("unit") or "", str(finding.category)
    if isinstance(limit, bool) or not isinstance(limit, (int, float)):
        return None
    if category == "dose" and "daily" in finding.evidence:
        label = f"将日剂量调整至不超过 {limit} {unit} (daily dose within the limit)"
    elif category == "dose" and "dose" in finding.evidence:
        label = f"将单次剂量调整至不超过 {limit} {unit} (single dose within the limit)"
    elif category == "duration" and "days" in finding.evidence:
        label = f"将处方天数调整至不超过 {limit} 天 (days of supply within the limit)"
    else:
        return None
    return {"label": " ".join(label.split()), "uuid": str(uuid.uuid4())}


def _card(finding: Finding, reasons: list[dict[str, str]], indicator: str) -> dict[str, Any]:
    label = finding.rule if not finding.reference else f"{finding.rule} · {finding.reference}"
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": truncate(finding.message),
        "indicator": indicator,
        "detail": _detail(finding),
        "source": {
            "label": truncate(label, 200),
            "topic": {"system": CATEGORY_SYSTEM, "code": str(finding.category),
                      "display": CATEGORY_LABELS_ZH.get(str(finding.category), str(finding.category))},
        },
    }
    suggestion = _suggestion(finding)
    if suggestion is not None:
        card["suggestions"] = [suggestion]
        card["selectionBehavior"] = "at-most-one"
    if reasons:
        card["overrideReasons"] = reasons
    return card


def cards(result: AuditResult | Mapping[str, Any], reasons: Any = (), *, include_info: bool = True) -> dict[str, Any]:
    """An audit result → the ``order-sign`` response ``{"cards": [...]}``.

    One card per warning or critical finding (indicator = severity), most severe first; info
    findings, if any and ``include_info``, share one grouped ``info`` card. ``reasons``: the queue's
    coded reasons (``rx_audit.queue.load_reasons()``), offered as ``overrideReasons``. Card
    ``uuid``s are new on every call: the server keeps uuid → (prescription, rule, item) to read
    feedback (see :func:`card_index`).
    """
    audit = result if isinstance(result, AuditResult) else AuditResult.model_validate(result)
    coded = override_reasons(reasons)
    ranked = sorted(
        (f for f in audit.findings if str(f.severity) != "info"), key=lambda f: str(f.severity) != "critical"
    )
    out = [_card(finding, coded, str(finding.severity)) for finding in ranked]
    infos = [f for f in audit.findings if str(f.severity) == "info"]
    if infos and include_info:
        out.append(_info_card(infos))
    return {"cards": out}


def _info_card(infos: list[Finding]) -> dict[str, Any]:
    summary = f"{len(infos)} 条提示 (info): " + "；".join(f.message for f in infos)
    detail = "\n".join(f"- {f.message} — `{f.rule}` (`{f.source}`)" for f in infos)
    return {
        "uuid": str(uuid.uuid4()),
        "summary": truncate(summary),
        "indicator": "info",
        "detail": detail,
        "source": {"label": "rx_audit: " + truncate(", ".join(sorted({f.rule for f in infos})), 180)},
    }


def card_index(result: AuditResult | Mapping[str, Any], response: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Card uuid → ``{"prescription", "rules", "items"}`` of a :func:`cards` response, for feedback."""
    audit = result if isinstance(result, AuditResult) else AuditResult.model_validate(result)
    warnings = sorted(
        (f for f in audit.findings if str(f.severity) != "info"), key=lambda f: str(f.severity) != "critical"
    )
    infos = [f for f in audit.findings if str(f.severity) == "info"]
    index: dict[str, dict[str, Any]] = {}
    for position, card in enumerate(response.get("cards") or []):
        group = [warnings[position]] if position < len(warnings) else infos
        index[str(card.get("uuid"))] = {
            "prescription": audit.id,
            "rules": [f.rule for f in group],
            "items": [f.item for f in group if f.item is not None],
        }
    return index


# --------------------------------------------------------------------------- feedback


def feedback_outcome(feedback: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A feedback POST body → one record per card: ``card``, ``outcome`` (``accepted`` |
    ``overridden``), ``outcome_timestamp``, ``accepted_suggestions`` (ids), ``reason_code``,
    ``reason_system``, ``reason_display``, ``comment``. ``overridden`` is what the service records
    as 双签 (the doctor insists). Raises :class:`PrescriptionError` naming the field if malformed.
    """
    entries = feedback.get("feedback") if isinstance(feedback, Mapping) else None
    if not isinstance(entries, list):
        raise PrescriptionError(None, "feedback", "feedback 应为数组 (feedback must be an array)")
    return [_feedback_record(entry, n) for n, entry in enumerate(entries)]


def _feedback_record(entry: Any, n: int) -> dict[str, Any]:
    where = f"feedback[{n}]"
    if not isinstance(entry, Mapping):
        raise PrescriptionError(None, where, "应为对象 (must be an object)")
    for key in ("card", "outcome", "outcomeTimestamp"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise PrescriptionError(None, f"{where}.{key}", "缺少或不是字符串 (missing or not a string)")
    if entry["outcome"] not in ("accepted", "overridden"):
        raise PrescriptionError(None, f"{where}.outcome", f"应为 accepted 或 overridden, 而非 {entry['outcome']!r}")
    accepted = entry.get("acceptedSuggestions") or []
    if entry["outcome"] == "accepted" and not accepted:
        raise PrescriptionError(None, f"{where}.acceptedSuggestions", "accepted 需要 acceptedSuggestions")
    record: dict[str, Any] = {
        "card": entry["card"],
        "outcome": entry["outcome"],
        "outcome_timestamp": entry["outcomeTimestamp"],
        "accepted_suggestions": [str(s.get("id")) for s in accepted if isinstance(s, Mapping) and s.get("id")],
        "reason_code": None,
        "reason_system": None,
        "reason_display": None,
        "comment": None,
    }
    override = entry.get("overrideReason")
    if isinstance(override, Mapping):
        reason: Mapping[str, Any] = override["reason"] if isinstance(override.get("reason"), Mapping) else {}
        record.update(reason_code=reason.get("code"), reason_system=reason.get("system"),
                      reason_display=reason.get("display"), comment=override.get("userComment"))  # fmt: skip
    return record
