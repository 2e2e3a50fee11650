"""The HTTP service in process (FastAPI's TestClient): every endpoint and every error, on SQLite and
PostgreSQL, with the real rulebook and a real review queue."""

from __future__ import annotations

import json
import logging
import threading

from conftest import FACILITY_A, FACILITY_B, KEY_A, KEY_B, auth, prescription

PROBLEM = "application/problem+json"


def is_problem(response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"].startswith("https://")
    assert "request_id" in body and response.headers["x-request-id"] == body["request_id"]
    if field is not None:
        assert body["field"] == field, body
    text = response.text
    for internal in ("Traceback", "sqlalchemy", "psycopg", "/work/", ".py", "postgresql+", "sqlite:///"):
        assert internal not in text, (internal, text)
    return body


def post_audit(client, record, key=KEY_A):
    return client.post("/v1/audit", json=record, headers=auth(key))


# --- POST /v1/audit ------------------------------------------------------------------------------


def test_clean_prescription_is_not_flagged_and_released(client):
    response = post_audit(client, prescription("A-CLEAN-1", kind="clean"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "A-CLEAN-1" and body["flagged"] is False and body["rulebook"].startswith("sha256:")
    assert body["submission"] == "stored" and body["version"] == 1 and "review" not in body
    state = client.get("/v1/prescriptions/A-CLEAN-1", headers=auth(KEY_A)).json()
    assert state["status"] == "not_flagged" and state["release"] is True and state["item"] is None


def test_critical_prescription_is_held_pending(client, queue):
    body = post_audit(client, prescription("A-CRIT-1")).json()
    assert body["flagged"] is True and body["severity"] == "critical"
    assert any(f["rule"] == "paracetamol.dose.adult.per_day" for f in body["findings"])
    assert body["review"]["status"] == "pending" and body["submission"] == "stored"
    item = queue.get(int(body["review"]["item"]))
    assert item.item.status == "pending" and item.item.prescription_id == "A-CRIT-1"
    state = client.get("/v1/prescriptions/A-CRIT-1", headers=auth(KEY_A)).json()
    assert state["status"] == "pending" and state["release"] is False and state["item"] == body["review"]["item"]
    assert state["facility"] == FACILITY_A and state["decision"] is None


def test_repeat_is_said_and_changed_content_is_a_new_version(client):
    first = post_audit(client, prescription("A-VER-1")).json()
    repeat = post_audit(client, prescription("A-VER-1")).json()
    assert repeat["submission"] == "repeat" and repeat["version"] == 1
    assert repeat["review"] == first["review"]
    fixed = post_audit(client, prescription("A-VER-1", kind="fixed")).json()
    assert fixed["submission"] == "new_version" and fixed["version"] == 2 and fixed["flagged"] is False
    state = client.get("/v1/prescriptions/A-VER-1", headers=auth(KEY_A)).json()
    assert state["version"] == 2 and state["status"] == "not_flagged" and state["release"] is True


# --- authentication and scope ----------------------------------------------------------------------


def test_every_call_needs_a_known_key(client):
    record = prescription("A-AUTH-1")
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}, auth("rxk_not-a-key")):
        response = client.post("/v1/audit", json=record, headers=headers)
        is_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
        is_problem(client.get("/v1/prescriptions/A-AUTH-1", headers=headers), 401)
        is_problem(client.post("/v1/prescriptions/A-AUTH-1/double-sign", json={}, headers=headers), 401)
    # nothing was stored by the refused calls
    is_problem(client.get("/v1/prescriptions/A-AUTH-1", headers=auth(KEY_A)), 404)


def test_a_key_cannot_submit_for_another_facility(client):
    body = is_problem(post_audit(client, prescription("B-BY-A", facility=FACILITY_B), key=KEY_A), 403, "facility.id")
    assert FACILITY_B in body["detail"]
    is_problem(client.get("/v1/prescriptions/B-BY-A", headers=auth(KEY_B)), 404)  # nothing stored
    missing = prescription("NO-FACILITY")
    del missing["facility"]
    is_problem(post_audit(client, missing), 422, "facility.id")


def test_a_key_cannot_read_or_double_sign_another_facilitys_prescription(client, queue):
    body = post_audit(client, prescription("B-OWN-1", facility=FACILITY_B), key=KEY_B).json()
    item = queue.claim(int(body["review"]["item"]), "ph01")
    queue.return_to_doctor(item.id, "ph01", "R02", "日剂量超过4g")
    assert client.get("/v1/prescriptions/B-OWN-1", headers=auth(KEY_B)).json()["status"] == "returned"
    not_found = is_problem(client.get("/v1/prescriptions/B-OWN-1", headers=auth(KEY_A)), 404)
    unknown = is_problem(client.get("/v1/prescriptions/NO-SUCH-RX", headers=auth(KEY_A)), 404)
    assert not_found["detail"] == unknown["detail"]  # exactly as if it did not exist
    sign = {"doctor_id": "D011", "reason": "会诊后确认"}
    is_problem(client.post("/v1/prescriptions/B-OWN-1/double-sign", json=sign, headers=auth(KEY_A)), 404)
    assert client.get("/v1/prescriptions/B-OWN-1", headers=auth(KEY_B)).json()["status"] == "returned"
    # the same id at facility A is A's own prescription: B's stays invisible to A
    assert post_audit(client, prescription("B-OWN-1", facility=FACILITY_A)).json()["flagged"] is True
    assert client.get("/v1/prescriptions/B-OWN-1", headers=auth(KEY_A)).json()["facility"] == FACILITY_A
    assert client.get("/v1/prescriptions/B-OWN-1", headers=auth(KEY_B)).json()["facility"] == FACILITY_B


# --- bad input ---------------------------------------------------------------------------------------


def test_bad_prescriptions_are_422_naming_the_field(client):
    record = prescription("A-BAD-1")
    record["items"][0]["dose"]["value"] = -5
    body = is_problem(post_audit(client, record), 422, "items.0.dose.value")
    assert body["prescription_id"] == "A-BAD-1" and "input:" not in body["detail"]
    record = prescription("A-BAD-2")
    del record["items"]
    is_problem(post_audit(client, record), 422, "items")
    headers = {**auth(KEY_A), "Content-Type": "application/json"}
    for text in (b"{not json", b"", b"[1, 2]", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000):
        body = is_problem(client.post("/v1/audit", content=text[:90_000], headers=headers), 422)
        assert body["type"].endswith("invalid-json")
    is_problem(client.get("/v1/prescriptions/A-BAD-1?wait=-1", headers=auth(KEY_A)), 422, "wait")
    is_problem(client.get("/v1/prescriptions/A-BAD-1?wait=abc", headers=auth(KEY_A)), 422, "wait")
    is_problem(client.get("/v1/prescriptions/A-BAD-1?wait=1&since=paid", headers=auth(KEY_A)), 422, "since")


def test_other_media_types_are_415(client):
    for media in ("text/plain", "application/fhir+json", "application/xml"):
        headers = {**auth(KEY_A), "Content-Type": media}
        is_problem(client.post("/v1/audit", content=json.dumps(prescription("A-MT-1")), headers=headers), 415)


def test_request_size_limit_is_413(make_client):
    client = make_client(max_body_bytes=5_000)
    record = prescription("A-BIG-1")
    record["note"] = "x" * 6_000
    is_problem(post_audit(client, record), 413)

    def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(10):
            yield b" " * 1_000

    headers = {**auth(KEY_A), "Content-Type": "application/json"}
    is_problem(client.post("/v1/audit", content=chunks(), headers=headers), 413)
    sign = {"doctor_id": "D1", "reason": "x" * 6_000}
    is_problem(client.post("/v1/prescriptions/A-BIG-1/double-sign", json=sign, headers=auth(KEY_A)), 413)
    is_problem(client.get("/v1/prescriptions/A-BIG-1", headers=auth(KEY_A)), 404)  # nothing stored


def test_rate_limit_per_key_is_429(make_client):
    client = make_client(rate_per_minute=60, rate_burst=2)
    client.app.state.services.limiter.clock = lambda: 1000.0  # frozen: no token comes back during the test
    for _ in range(2):
        is_problem(client.get("/v1/prescriptions/NONE", headers=auth(KEY_A)), 404)
    response = client.get("/v1/prescriptions/NONE", headers=auth(KEY_A))
    is_problem(response, 429)
    assert int(response.headers["retry-after"]) >= 1
    is_problem(client.get("/v1/prescriptions/NONE", headers=auth(KEY_B)), 404)  # another key has its own bucket
    client.app.state.services.limiter.clock = lambda: 1001.0  # one second: one token back at 60 a minute
    is_problem(client.get("/v1/prescriptions/NONE", headers=auth(KEY_A)), 404)


def test_an_unexpected_error_is_a_500_problem_without_internals(client, caplog):
    class Broken:
        rulebook_hash = "sha256:x"

        def audit(self, record):
            raise RuntimeError("secret internals: P-1080 /work/rules")

    client.app.state.services.auditor = Broken()
    with caplog.at_level(logging.INFO, logger="rx_audit.server"):
        body = is_problem(post_audit(client, prescription("A-500-1")), 500)
    assert "secret" not in json.dumps(body)
    assert not any("secret" in record.getMessage() for record in caplog.records)
    errors = [json.loads(r.getMessage()) for r in caplog.records if r.name == "rx_audit.server"]
    assert errors and errors[0]["error"] == "RuntimeError" and errors[0]["request_id"] == body["request_id"]
    assert errors[0]["frames"]  # where it failed, for the operator


# --- double sign ---------------------------------------------------------------------------------------


def test_double_sign_after_a_return(client, queue):
    body = post_audit(client, prescription("A-DS-1")).json()
    sign = {"doctor_id": "D011", "reason": "患者高热，会诊后确认短期使用"}
    conflict = is_problem(client.post("/v1/prescriptions/A-DS-1/double-sign", json=sign, headers=auth(KEY_A)), 409)
    assert "pending" in conflict["detail"]
    item = queue.claim(int(body["review"]["item"]), "ph01")
    queue.return_to_doctor(item.id, "ph01", "R02", "日剂量6g超过4g")
    state = client.get("/v1/prescriptions/A-DS-1", headers=auth(KEY_A)).json()
    assert state["status"] == "returned" and state["release"] is False
    decision = state["decision"]
    assert decision["action"] == "return" and decision["by"] == "ph01" and decision["reason_code"] == "R02"
    assert decision["note"] == "日剂量6g超过4g" and decision["reason"] and decision["at"]
    for bad, field in (({"reason": "x"}, "doctor_id"), ({"doctor_id": "D011"}, "reason"),
                       ({"doctor_id": "D011", "reason": "  "}, "reason"),
                       ({"doctor_id": "D011", "reason": "x", "extra": 1}, "extra")):  # fmt: skip
        is_problem(client.post("/v1/prescriptions/A-DS-1/double-sign", json=bad, headers=auth(KEY_A)), 422, field)
    signed = client.post("/v1/prescriptions/A-DS-1/double-sign", json=sign, headers=auth(KEY_A))
    assert signed.status_code == 200, signed.text
    assert signed.json()["status"] == "double_signed" and signed.json()["decision"]["action"] == "double_sign"
    assert queue.get(item.id).item.status == "double_signed"
    is_problem(client.post("/v1/prescriptions/NO-SUCH/double-sign", json=sign, headers=auth(KEY_A)), 404)


# --- long polling ----------------------------------------------------------------------------------------


def test_long_poll_returns_when_the_pharmacist_decides(client, queue, monkeypatch):
    body = post_audit(client, prescription("A-POLL-1")).json()
    item_id = int(body["review"]["item"])
    polls: list[str] = []
    polled_twice = threading.Event()
    search = queue.search

    def counting_search(*args, **kwargs):
        polls.append("poll")
        if len(polls) >= 2:
            polled_twice.set()  # the request took its first state and is now waiting
        return search(*args, **kwargs)

    monkeypatch.setattr(queue, "search", counting_search)
    decided: list[int] = []

    def pharmacist():
        assert polled_twice.wait(120)
        queue.claim(item_id, "ph02")
        queue.approve(item_id, "ph02", "A04", "已与医生沟通，高热短期使用")
        decided.append(len(polls))

    thread = threading.Thread(target=pharmacist)
    thread.start()
    state = client.get("/v1/prescriptions/A-POLL-1?wait=600&since=pending", headers=auth(KEY_A)).json()
    thread.join()
    # since=pending: a claim is already a change; then wait for the decision without `since`
    if state["status"] == "claimed":
        state = client.get("/v1/prescriptions/A-POLL-1?wait=600&since=claimed", headers=auth(KEY_A)).json()
    assert state["status"] == "approved" and state["release"] is True
    assert state["decision"]["by"] == "ph02" and state["decision"]["reason_code"] == "A04"


def test_long_poll_without_since_returns_on_the_first_change(client, queue, monkeypatch):
    body = post_audit(client, prescription("A-POLL-2")).json()
    item_id = int(body["review"]["item"])
    queue.claim(item_id, "ph03")
    polls: list[int] = []
    waiting = threading.Event()
    search = queue.search

    def counting_search(*args, **kwargs):
        polls.append(1)
        if len(polls) >= 2:
            waiting.set()
        return search(*args, **kwargs)

    monkeypatch.setattr(queue, "search", counting_search)
    after: list[int] = []

    def pharmacist():
        assert waiting.wait(120)
        queue.return_to_doctor(item_id, "ph03", "R02", "剂量过大")
        after.append(len(polls))

    thread = threading.Thread(target=pharmacist)
    thread.start()
    state = client.get("/v1/prescriptions/A-POLL-2?wait=600", headers=auth(KEY_A)).json()
    thread.join()
    assert state["status"] == "returned" and state["decision"]["reason_code"] == "R02"
    # it returned on the next poll after the decision (at most one poll in flight then), not at the deadline
    assert len(polls) - after[0] <= 2


def test_long_poll_with_no_change_returns_the_state_at_the_deadline(make_client):
    client = make_client(max_wait_seconds=0.3)
    post_audit(client, prescription("A-POLL-3"))
    state = client.get("/v1/prescriptions/A-POLL-3?wait=3600", headers=auth(KEY_A)).json()  # capped at 0.3 s
    assert state["status"] == "pending"
    state = client.get("/v1/prescriptions/A-POLL-3?wait=3600&since=claimed", headers=auth(KEY_A)).json()
    assert state["status"] == "pending"  # already not `claimed`: at once


# --- operations -----------------------------------------------------------------------------------------


def test_health_readiness_and_metrics(client, auditor):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["checks"] == {"rulebook": auditor.rulebook_hash, "database": "ok"}
    post_audit(client, prescription("A-MET-1"))
    post_audit(client, prescription("A-MET-1"))
    post_audit(client, prescription("A-MET-2", kind="clean"))
    bad = prescription("A-MET-3")
    bad["items"][0]["dose"]["value"] = -1
    post_audit(client, bad)
    text = client.get("/metrics").text
    for line in ('rx_audit_audits_total{outcome="queued"} 1.0', 'rx_audit_audits_total{outcome="repeat"} 1.0',
                 'rx_audit_audits_total{outcome="not_flagged"} 1.0', 'rx_audit_audits_total{outcome="invalid"} 1.0',
                 "rx_audit_queue_depth 1.0", 'rx_audit_request_seconds_count{route="/v1/audit"} 4.0'):  # fmt: skip
        assert line in text, line


def test_readyz_is_503_when_the_database_does_not_answer(client, queue, monkeypatch):
    from rx_audit.errors import DatabaseUnavailableError

    def down(*args, **kwargs):
        raise DatabaseUnavailableError("connection refused to postgresql+psycopg://rx:secret@db/rx", url=None)

    monkeypatch.setattr(queue, "count", down)
    body = is_problem(client.get("/readyz"), 503)
    assert body["checks"]["database"] == "unavailable" and "secret" not in json.dumps(body)
    monkeypatch.setattr(queue, "search", down)
    body = is_problem(client.get("/v1/prescriptions/X", headers=auth(KEY_A)), 503)
    assert "secret" not in json.dumps(body)
    assert "rx_audit_queue_depth" not in client.get("/metrics").text  # no value rather than a wrong one


def test_access_log_is_json_without_patient_data(client, caplog):
    record = prescription("A-LOG-1")
    with caplog.at_level(logging.INFO, logger="rx_audit.server.access"):
        post_audit(client, record)
        client.get("/v1/prescriptions/A-LOG-1", headers={**auth(KEY_A), "X-Request-ID": "his-req-42"})
        client.get("/v1/prescriptions/A-LOG-1", headers=auth("rxk_wrong"))
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "rx_audit.server.access"]
    assert [line["status"] for line in lines] == [200, 200, 401]
    assert lines[0]["key"] == "his-a" and lines[0]["prescription"] == "A-LOG-1" and lines[0]["outcome"] == "queued"
    assert lines[1]["request_id"] == "his-req-42" and lines[1]["outcome"] == "pending"
    assert lines[2]["key"] is None and all(line["ms"] >= 0 for line in lines)
    text = "\n".join(r.getMessage() for r in caplog.records)
    for private in (record["patient"]["id"], record["prescriber"]["name"], "对乙酰氨基酚", KEY_A, "rxk_wrong"):
        assert private not in text


def test_double_sign_refused_when_the_latest_version_needs_no_review(client, queue):
    body = post_audit(client, prescription("A-DS-2")).json()
    queue.claim(int(body["review"]["item"]), "ph01")
    queue.return_to_doctor(int(body["review"]["item"]), "ph01", "R02", "剂量过大")
    assert post_audit(client, prescription("A-DS-2", kind="fixed")).json()["submission"] == "new_version"
    sign = {"doctor_id": "D011", "reason": "坚持原方"}
    body = is_problem(client.post("/v1/prescriptions/A-DS-2/double-sign", json=sign, headers=auth(KEY_A)), 409)
    assert "not_flagged" in body["detail"]
    assert client.get("/v1/prescriptions/A-DS-2", headers=auth(KEY_A)).json()["status"] == "not_flagged"
