"""CDS Hooks 2.0 mapping (rx_audit.adapters.cds_hooks), checked against the hand-written 2.0 schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from rx_audit import Auditor, PrescriptionError, parse_prescription
from rx_audit.adapters import cds_hooks
from rx_audit.adapters.cds_hooks import (
    card_index,
    cards,
    discovery,
    feedback_outcome,
    prescription_from_order_sign,
    truncate,
)
from tests.adapters.fhir_data import county_resources, metformin_request, metformin_tablet_request

pytest.importorskip("fhir.resources")
SCHEMAS = Path(__file__).parent / "schemas"


def check(document: Any, schema: str) -> None:
    validator = jsonschema.Draft202012Validator(
        json.loads((SCHEMAS / schema).read_text()), format_checker=jsonschema.FormatChecker()
    )
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


@pytest.fixture(scope="module")
def reasons() -> Any:
    from rx_audit.queue import load_reasons

    return load_reasons()


def _searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"http://his.example.cn/fhir/{r['resourceType']}/{r['id']}", "resource": r}
                      for r in resources]}  # fmt: skip


def order_sign_request(*orders: dict[str, Any], egfr: float = 24, weight: bool = True) -> dict[str, Any]:
    resources = {r["id"]: r for r in county_resources(egfr)}
    drafts = [dict(o, status="draft") for o in (orders or (metformin_request(dose=1500),))]
    for draft in drafts:
        draft.pop("requester", None)  # the clinician signing: context.userId
    return {
        "hook": "order-sign",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "fhirServer": "https://his.example.cn/fhir",
        "context": {
            "userId": "Practitioner/D007",
            "patientId": "p1",
            "draftOrders": {"resourceType": "Bundle", "type": "collection",
                            "entry": [{"resource": d} for d in drafts]},
        },
        "prefetch": {
            "patient": resources["p1"],
            "conditions": _searchset([resources["c1"], resources["c2"]]),
            "allergies": _searchset([resources["a1"]]),
            "egfr": _searchset([resources["egfr-new"]]),
            "weight": _searchset([resources["weight"]]) if weight else None,
        },
    }  # fmt: skip


# --------------------------------------------------------------------------- discovery


def test_discovery() -> None:
    body = discovery()
    check(body, "discovery-response.schema.json")
    service = body["services"][0]
    assert service["id"] == "rx-audit-order-sign" and service["hook"] == "order-sign"
    assert set(service["prefetch"]) >= {"patient", "conditions", "allergies", "egfr"}
    assert all("{{context.patientId}}" in template for template in service["prefetch"].values())
    assert "33914-3" in service["prefetch"]["egfr"] and "98979-8" in service["prefetch"]["egfr"]
    extra = {"id": "other", "hook": "patient-view", "title": "x", "description": "y"}
    assert [s["id"] for s in discovery([extra])["services"]] == ["rx-audit-order-sign", "other"]


# --------------------------------------------------------------------------- request → prescription


def test_order_sign_request_to_prescription(auditor: Auditor) -> None:
    request = order_sign_request()
    check(request, "order-sign-request.schema.json")
    record = prescription_from_order_sign(request, facility={"id": "LZH", "level": "township"})
    parse_prescription(record)
    assert record["id"] == "MNS-20250326-000123"  # the draft orders' group identifier
    assert record["facility"] == {"id": "LZH", "level": "township"}
    assert record["prescriber"] == {"id": "D007"}  # from context.userId
    assert record["patient"]["egfr"] == 24 and record["patient"]["allergies"] == ["青霉素"]
    assert record["patient"]["sex"] == "F" and record["patient"]["weight_kg"] == pytest.approx(61.01, abs=0.01)
    assert record["diagnoses"][0] == {"code": "E11.900", "name": "2型糖尿病"}
    assert record["items"][0]["dose"] == {"value": 1500, "unit": "mg"}
    assert record["cds_hook_instance"] == request["hookInstance"]
    assert auditor.audit(record).severity == "critical"


def test_order_sign_without_prefetch_names_nothing_it_does_not_know(auditor: Auditor) -> None:
    request = order_sign_request()
    del request["prefetch"]
    for entry in request["context"]["draftOrders"]["entry"]:
        entry["resource"].pop("groupIdentifier")
        entry["resource"].pop("subject")
    record = prescription_from_order_sign(request)
    assert record["id"] == request["hookInstance"]
    assert record["patient"] == {"id": "p1"}  # from context.patientId; no age, sex or eGFR guessed
    rules = {f.rule for f in auditor.audit(record).findings}
    assert {"completeness.missing.age", "metformin.missing.egfr"} <= rules


def test_other_draft_orders_and_null_prefetch_are_skipped() -> None:
    request = order_sign_request(weight=False)
    request["context"]["draftOrders"]["entry"].append({"resource": {
        "resourceType": "ServiceRequest", "id": "lab1", "status": "draft", "intent": "order",
        "subject": {"reference": "Patient/p1"}, "code": {"text": "肾功能"},
    }})  # fmt: skip
    request["prefetch"]["outcome"] = {"resourceType": "OperationOutcome", "issue": []}
    record = prescription_from_order_sign(request)
    assert len(record["items"]) == 1 and "weight_kg" not in record["patient"]


@pytest.mark.parametrize(
    ("change", "field"),
    [({"hook": "patient-view"}, "hook"), ({"context": {"patientId": "p1"}}, "context.draftOrders")],
)
def test_bad_requests(change: dict[str, Any], field: str) -> None:
    with pytest.raises(PrescriptionError) as caught:
        prescription_from_order_sign({**order_sign_request(), **change})
    assert caught.value.field == field


# --------------------------------------------------------------------------- result → cards


def test_cards(auditor: Auditor, reasons: Any) -> None:
    record = prescription_from_order_sign(order_sign_request(metformin_tablet_request(dose=1500)))
    assert record["items"][0]["form"] == "tablet" and record["items"][0]["strength"] == {"value": 500, "unit": "mg"}
    record["patient"]["egfr"] = 74  # no contraindication: the dose limits fire
    result = auditor.audit(record)
    body = cards(result, reasons)
    check(body, "cds-response.schema.json")
    warnings = [f for f in result.findings if f.severity != "info"]
    assert len(body["cards"]) == len(warnings) + 1  # + one grouped info card
    indicators = [c["indicator"] for c in body["cards"]]
    assert indicators == sorted(indicators, key=["critical", "warning", "info"].index)
    per_dose = next(c for c in body["cards"] if c["source"]["label"].startswith("metformin.dose.adult.per_dose"))
    assert per_dose["indicator"] == "warning" and per_dose["summary"] == next(
        f.message for f in result.findings if f.rule == "metformin.dose.adult.per_dose")
    assert per_dose["suggestions"][0]["label"].startswith("将单次剂量调整至不超过 1000 mg")
    assert "`metformin.dose.adult.per_dose`" in per_dose["detail"] and "limit: 1000" in per_dose["detail"]
    assert "说明书" in per_dose["source"]["label"]  # the rule's clinical reference
    approve = [r for r in reasons.values() if r.kind == "approve"]
    assert per_dose["overrideReasons"] == [
        {"code": r.code, "system": "https://rx-audit.org/fhir/CodeSystem/override-reason", "display": r.label}
        for r in approve
    ]
    assert len({c["uuid"] for c in body["cards"]}) == len(body["cards"])
    index = card_index(result, body)
    assert index[per_dose["uuid"]] == {"prescription": result.id, "rules": ["metformin.dose.adult.per_dose"],
                                       "items": ["mr1"]}  # fmt: skip


def test_cards_critical_first_and_info_optional(auditor: Auditor) -> None:
    result = auditor.audit(prescription_from_order_sign(order_sign_request()))
    body = cards(result.to_contract(), [], include_info=False)
    check(body, "cds-response.schema.json")
    assert body["cards"][0]["indicator"] == "critical"
    assert all(c["indicator"] != "info" and "overrideReasons" not in c for c in body["cards"])
    assert cards({"id": "x", "flagged": False, "severity": None, "rulebook": "h", "findings": []}) == {"cards": []}


def test_summary_is_cut_cleanly() -> None:
    message = "阿莫西林日剂量 6000mg 超过上限 4000mg（adult），" + "请核对剂量与给药频次，" * 20
    summary = truncate(message)
    assert len(summary) <= 140 and summary.endswith("…") and not summary.endswith("，…")
    assert summary.startswith("阿莫西林日剂量 6000mg 超过上限 4000mg")
    assert truncate("短消息") == "短消息"
    assert len(truncate("x" * 500)) == 140


def test_long_findings_give_valid_cards() -> None:
    finding = {"rule": "r." + "x" * 300, "category": "duration", "severity": "warning", "item": "1",
               "message": "处方天数" * 100, "source": "rules/x.yaml:1", "reference": "依据" * 200,
               "evidence": {"days": 90, "limit": 30}}  # fmt: skip
    reasons = [{"code": "A01", "label": "审核无误", "kind": "approve"},
               {"code": "R01", "label": "退", "kind": "return"}]
    body = cards({"id": "x", "flagged": True, "severity": "warning", "rulebook": "h", "findings": [finding]}, reasons)
    check(body, "cds-response.schema.json")
    card = body["cards"][0]
    assert card["suggestions"][0]["label"].startswith("将处方天数调整至不超过 30 天")
    coding = {"code": "A01", "system": cds_hooks.OVERRIDE_REASON_SYSTEM, "display": "审核无误"}
    assert card["overrideReasons"] == [coding]  # return reasons are not override reasons


# --------------------------------------------------------------------------- feedback


ACCEPTED = {"feedback": [{"card": "4e0a3a1e-3283-4575-ab82-028d55fe2719", "outcome": "accepted",
                          "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
                          "outcomeTimestamp": "2021-12-11T10:05:31Z"}]}  # fmt: skip
OVERRIDDEN = {"feedback": [
    {"card": "9368d37b-283f-44a0-93ea-547cebab93ed", "outcome": "overridden",
     "overrideReason": {"reason": {"code": "A04", "system": cds_hooks.OVERRIDE_REASON_SYSTEM,
                                   "display": "已与医生沟通，医生确认用药合理"},
                        "userComment": "患者长期服用，肾功能稳定"},
     "outcomeTimestamp": "2020-12-11T00:00:00Z"},
    {"card": "f6b95768-b1c8-40dc-8385-bf3504b82ffb", "outcome": "overridden",
     "outcomeTimestamp": "2020-12-11T00:00:00Z"},
]}  # fmt: skip


def test_feedback_accepted() -> None:
    check(ACCEPTED, "feedback-request.schema.json")
    assert feedback_outcome(ACCEPTED) == [{
        "card": "4e0a3a1e-3283-4575-ab82-028d55fe2719", "outcome": "accepted",
        "outcome_timestamp": "2021-12-11T10:05:31Z",
        "accepted_suggestions": ["e56e1945-20b3-4393-8503-a1a20fd73152"],
        "reason_code": None, "reason_system": None, "reason_display": None, "comment": None,
    }]  # fmt: skip


def test_feedback_overridden() -> None:
    check(OVERRIDDEN, "feedback-request.schema.json")
    first, second = feedback_outcome(OVERRIDDEN)
    assert first["outcome"] == "overridden" and first["reason_code"] == "A04"
    assert first["reason_system"] == cds_hooks.OVERRIDE_REASON_SYSTEM and first["comment"] == "患者长期服用，肾功能稳定"
    assert second["reason_code"] is None and second["comment"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "feedback"),
        ({"feedback": ["x"]}, "feedback[0]"),
        ({"feedback": [{"outcome": "overridden", "outcomeTimestamp": "t"}]}, "feedback[0].card"),
        ({"feedback": [{"card": "c", "outcome": "ignored", "outcomeTimestamp": "t"}]}, "feedback[0].outcome"),
        ({"feedback": [{"card": "c", "outcome": "accepted", "outcomeTimestamp": "t"}]},
         "feedback[0].acceptedSuggestions"),
    ],
)
def test_bad_feedback(body: dict[str, Any], field: str) -> None:
    with pytest.raises(PrescriptionError) as caught:
        feedback_outcome(body)
    assert caught.value.field == field


def test_schemas_reject_what_the_spec_forbids() -> None:
    bad_card = {"cards": [{"summary": "x" * 141, "indicator": "hard-stop", "source": {}}]}
    with pytest.raises(AssertionError):
        check(bad_card, "cds-response.schema.json")
    with pytest.raises(AssertionError):
        check({"cards": [{"summary": "s", "indicator": "info", "source": {"label": "l"},
                          "suggestions": [{"label": "x"}]}]}, "cds-response.schema.json")  # no selectionBehavior
    with pytest.raises(AssertionError):
        check({"feedback": [{"card": "c", "outcome": "accepted", "outcomeTimestamp": "2020-12-11T00:00:00Z"}]},
              "feedback-request.schema.json")
