"""FHIR R4 (``POST /v1/audit`` as application/fhir+json) and CDS Hooks 2.0 (discovery, order-sign,
feedback) served in process, on SQLite and PostgreSQL, with the real rulebook and review queue."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from conftest import FACILITY_A, FACILITY_B, KEY_A, KEY_B, auth
from test_server_api import is_problem

from rx_audit.server.auth import key_entry

pytest.importorskip("fhir.resources")
pytest.importorskip("jsonschema")

from tests.adapters.fhir_data import (
    county_bundle,
    example_bundle,
    example_requests,
    metformin_request,
)
from tests.adapters.test_cds_hooks import check, order_sign_request

FHIR = "application/fhir+json"
SERVICE = "/cds-services/rx-audit-order-sign"
KEY_AB = "rxk_test-key-of-facilities-A-and-B-0123456789"


def post_bundle(client, bundle: dict[str, Any], key: str = KEY_A):
    import json

    headers = {**auth(key), "Content-Type": FHIR}
    return client.post("/v1/audit", content=json.dumps(bundle, ensure_ascii=False).encode(), headers=headers)


def parameters(body: dict[str, Any]) -> dict[str, Any]:
    (summary,) = [e["resource"] for e in body["entry"] if e["resource"]["resourceType"] == "Parameters"]
    return {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in summary["parameter"]}


def issues(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in body["entry"] if e["resource"]["resourceType"] == "DetectedIssue"]


# --- FHIR R4 ------------------------------------------------------------------------------------------


def test_a_published_r4_example_is_answered_with_detected_issues(client):
    from fhir.resources.R4B.bundle import Bundle

    bundle = example_bundle(example_requests()[0])
    response = post_bundle(client, bundle)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FHIR)
    body = response.json()
    Bundle.model_validate(body)  # a valid FHIR R4 Bundle
    assert body["resourceType"] == "Bundle" and body["type"] == "collection"
    summary = parameters(body)
    assert summary["id"] == bundle["id"] and summary["submission"] == "stored" and summary["version"] == 1
    found = issues(body)
    assert len(found) == len(body["entry"]) - 1
    for issue in found:
        assert issue["status"] == "final" and issue["severity"] in ("high", "moderate", "low")
        assert issue["patient"] == {"reference": "Patient/pat1"}
    state = client.get(f"/v1/prescriptions/{bundle['id']}", headers=auth(KEY_A)).json()
    assert state["facility"] == FACILITY_A  # the key's facility
    assert state["flagged"] is summary["flagged"]


def test_metformin_at_egfr_20_is_critical_and_held(client, queue):
    response = post_bundle(client, county_bundle(metformin_request(dose=500), egfr=20))
    assert response.status_code == 200, response.text
    body = response.json()
    summary = parameters(body)
    assert summary["flagged"] is True and summary["severity"] == "critical"
    assert summary["review-status"] == "pending"
    high = [i for i in issues(body) if i["severity"] == "high"]
    assert high and any(i["identifier"][0]["value"].startswith("metformin.") for i in high)
    assert all(i["implicated"] == [{"reference": "MedicationRequest/mr1"}] for i in high if "implicated" in i)
    item = queue.get(int(summary["review-item"]))
    assert item.item.status == "pending" and item.item.prescription_id == summary["id"] == "MNS-20250326-000123"
    state = client.get(f"/v1/prescriptions/{summary['id']}", headers=auth(KEY_A)).json()
    assert state["status"] == "pending" and state["release"] is False
    repeat = parameters(post_bundle(client, county_bundle(metformin_request(dose=500), egfr=20)).json())
    assert repeat["submission"] == "repeat" and repeat["review-item"] == summary["review-item"]


def test_invalid_fhir_is_a_problem_naming_the_path(client):
    bundle = county_bundle(metformin_request())
    bundle["entry"][-1]["resource"]["status"] = 7  # not a code
    body = is_problem(post_bundle(client, bundle), 422)
    assert body["field"].startswith("Bundle.entry[") and "MedicationRequest/mr1" in body["field"]
    body = is_problem(post_bundle(client, {"resourceType": "Patient", "id": "p1"}), 422, "resourceType")
    no_requests = county_bundle(metformin_request())
    no_requests["entry"] = no_requests["entry"][:-1]
    is_problem(post_bundle(client, no_requests), 422, "Bundle.entry")
    is_problem(client.get("/v1/prescriptions/county-1", headers=auth(KEY_A)), 404)  # nothing stored


def test_fhir_needs_a_key_of_one_facility(make_client, keys_file: Path):
    keys_file.write_text(keys_file.read_text() + "\n" + key_entry("his-ab", KEY_AB, [FACILITY_A, FACILITY_B]))
    client = make_client(keys_file=keys_file)
    is_problem(post_bundle(client, county_bundle(), key=KEY_AB), 422, "facility")
    is_problem(client.post(SERVICE, json=order_sign_request(), headers=auth(KEY_AB)), 422, "facility")
    is_problem(post_bundle(client, county_bundle(), key="rxk_unknown"), 401)


# --- CDS Hooks 2.0 -------------------------------------------------------------------------------------


def test_discovery(client):
    response = client.get("/cds-services", headers=auth(KEY_A))
    assert response.status_code == 200
    body = response.json()
    check(body, "discovery-response.schema.json")
    assert [s["id"] for s in body["services"]] == ["rx-audit-order-sign"]
    assert body["services"][0]["hook"] == "order-sign"
    is_problem(client.get("/cds-services"), 401)


def test_order_sign_answers_cards_and_queues(client, queue):
    request = order_sign_request()
    response = client.post(SERVICE, json=request, headers=auth(KEY_A))
    assert response.status_code == 200, response.text
    body = response.json()
    check(body, "cds-response.schema.json")
    indicators = [c["indicator"] for c in body["cards"]]
    assert indicators[0] == "critical" and indicators == sorted(indicators, key=["critical", "warning", "info"].index)
    approve = {r.code for r in queue.reasons("approve")}
    assert {r["code"] for r in body["cards"][0]["overrideReasons"]} == approve
    state = client.get("/v1/prescriptions/MNS-20250326-000123", headers=auth(KEY_A)).json()
    assert state["status"] == "pending" and state["facility"] == FACILITY_A
    assert queue.get(int(state["item"])).item.status == "pending"


def test_order_sign_bad_requests_are_problems(client):
    is_problem(client.post(SERVICE, json={**order_sign_request(), "hook": "patient-view"}, headers=auth(KEY_A)),
               422, "hook")  # fmt: skip
    is_problem(client.post(SERVICE, json=order_sign_request()), 401)
    is_problem(client.post(SERVICE, content=b"[1]", headers=auth(KEY_A)), 422)
    is_problem(client.post(SERVICE + "/feedback", json={"feedback": {}}, headers=auth(KEY_A)), 422, "feedback")


def _override(card: dict[str, Any], comment: str = "肾内科会诊后确认") -> dict[str, Any]:
    return {"feedback": [{
        "card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2025-03-26T02:40:00Z",
        "overrideReason": {"reason": card["overrideReasons"][0], "userComment": comment},
    }]}  # fmt: skip


def test_overridden_feedback_is_recorded_as_double_signature(client, queue):
    cards = client.post(SERVICE, json=order_sign_request(), headers=auth(KEY_A)).json()["cards"]
    critical = cards[0]
    feedback = _override(critical)
    check(feedback, "feedback-request.schema.json")
    # still pending: noted (the queue has no trail API for it), the item untouched
    pending = client.post(SERVICE + "/feedback", json=feedback, headers=auth(KEY_A))
    assert pending.status_code == 200, pending.text
    assert pending.json()["feedback"] == [{"card": critical["uuid"], "outcome": "overridden",
                                           "prescription": "MNS-20250326-000123", "recorded": "noted"}]  # fmt: skip
    state = client.get("/v1/prescriptions/MNS-20250326-000123", headers=auth(KEY_A)).json()
    assert state["status"] == "pending"
    # the pharmacist returns it; the doctor overrides the card: 双签, by the hook's userId
    item = queue.claim(int(state["item"]), "ph01")
    queue.return_to_doctor(item.id, "ph01", "R02", "eGFR<30 禁用二甲双胍")
    signed = client.post(SERVICE + "/feedback", json=feedback, headers=auth(KEY_A)).json()
    assert signed["feedback"][0]["recorded"] == "double_signed"
    state = client.get("/v1/prescriptions/MNS-20250326-000123", headers=auth(KEY_A)).json()
    assert state["status"] == "double_signed"
    detail = queue.get(int(state["item"]))
    assert detail.item.status == "double_signed"
    reason = critical["overrideReasons"][0]
    assert any(d.action == "double_sign" and d.actor == "Practitioner/D007" and reason["display"] in d.comment
               and "肾内科会诊后确认" in d.comment for d in detail.decisions)  # fmt: skip


def test_accepted_and_unknown_feedback(client, make_client):
    cards = client.post(SERVICE, json=order_sign_request(), headers=auth(KEY_A)).json()["cards"]
    accepted = {"feedback": [
        {"card": cards[0]["uuid"], "outcome": "accepted", "outcomeTimestamp": "2025-03-26T02:40:00Z",
         "acceptedSuggestions": [{"id": "s1"}]},
        {"card": "no-such-card", "outcome": "accepted", "outcomeTimestamp": "2025-03-26T02:40:00Z",
         "acceptedSuggestions": [{"id": "s1"}]},
    ]}  # fmt: skip
    body = client.post(SERVICE + "/feedback", json=accepted, headers=auth(KEY_A)).json()
    assert [f["recorded"] for f in body["feedback"]] == ["noted", "unknown-card"]
    stored = client.app.state.services.queue.cds_feedback(body["feedback"][0]["prescription"], [FACILITY_A])
    assert [(f["outcome"], f["recorded"]) for f in stored] == [("accepted", "noted")]
    # another facility's key cannot resolve A's cards
    other = client.post(SERVICE + "/feedback", json=copy.deepcopy(_override(cards[0])), headers=auth(KEY_B)).json()
    assert other["feedback"][0]["recorded"] == "unknown-card"


def test_feedback_reaching_another_worker_is_understood(make_client, db_url):
    """Cards are kept in the queue's database: feedback sent to another worker (here another app with
    its own ReviewQueue on the same database) than the one that answered the hook still finds its
    card and stores the feedback (in memory, as before, it was "unknown-card")."""
    from rx_audit import ReviewQueue

    first = make_client()
    cards = first.post(SERVICE, json=order_sign_request(), headers=auth(KEY_A)).json()["cards"]
    other_queue = ReviewQueue(db_url)
    try:
        from fastapi.testclient import TestClient

        from rx_audit.server.app import create_app

        second_app = create_app(first.app.state.services.settings, auditor=first.app.state.services.auditor,
                                queue=other_queue)
        with TestClient(second_app) as second:
            answer = second.post(SERVICE + "/feedback", json={"feedback": [
                {"card": cards[0]["uuid"], "outcome": "accepted", "outcomeTimestamp": "2025-03-26T02:40:00Z",
                 "acceptedSuggestions": [{"id": "s1"}]}]}, headers=auth(KEY_A)).json()  # fmt: skip
        assert answer["feedback"][0]["recorded"] == "noted"
        assert other_queue.cds_feedback(answer["feedback"][0]["prescription"], [FACILITY_A])
    finally:
        other_queue.close()
