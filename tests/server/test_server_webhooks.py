"""Webhooks end to end, on SQLite and PostgreSQL: a real HTTP receiver on 127.0.0.1 checks the signature
and records event ids; decisions are made through ``ReviewQueue``; the deliverer runs with an injected
clock (retries are driven by moving the clock, never by sleeping)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import FACILITY_A, FACILITY_B, KEY_A, KEY_B, auth, prescription

from rx_audit.server.webhooks import Deliverer

SECRET = "whsec_" + "0123456789abcdef" * 2


class Receiver:
    """An HIS endpoint: answers ``statuses`` in turn (then 200), verifies each signature, records events."""

    def __init__(self, statuses: list[int] | None = None, secret: str = SECRET):
        self.statuses = list(statuses or [])
        self.secret = secret
        self.received: list[dict[str, Any]] = []
        self.got = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                timestamp = self.headers["X-Rx-Audit-Timestamp"]
                expected = hmac.new(receiver.secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
                signed = hmac.compare_digest("v1=" + expected.hexdigest(), self.headers["X-Rx-Audit-Signature"])
                payload = json.loads(body)
                receiver.received.append({"event_id": self.headers["X-Rx-Audit-Event-Id"], "signed": signed,
                                          "body": payload})  # fmt: skip
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status if signed else 401)
                self.end_headers()
                receiver.got.set()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/rx-hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


@pytest.fixture
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """No deliverer thread in the app: the test drives delivery."""
    monkeypatch.setenv("RX_AUDIT_WEBHOOKS", "0")


def decide(queue: Any, auditor: Any, rx_id: str, facility: str = FACILITY_A) -> int:
    record = prescription(rx_id, facility)
    item = queue.submit(record, auditor.audit(record))
    assert item is not None
    queue.claim(item.id, "ph1")
    queue.approve(item.id, "ph1", "A01", "已与医生核实")
    return int(item.id)


def register(client: Any, url: str, key: str = KEY_A, secret: str = SECRET) -> None:
    answer = client.put("/v1/webhooks", json={"url": url, "secret": secret}, headers=auth(key))
    assert answer.status_code == 200, answer.text
    assert "secret" not in answer.json()


def test_a_decision_is_delivered_once_signed_with_the_state_body(quiet, client, queue, auditor, receiver) -> None:
    register(client, receiver.url)
    decide(queue, auditor, "WH-1")
    clock = Clock()
    deliverer = Deliverer(queue, clock=clock)
    assert deliverer.run_once() == 1
    assert deliverer.run_once() == 0  # delivered: never sent again
    assert len(receiver.received) == 1
    got = receiver.received[0]
    assert got["signed"] and got["event_id"] == got["body"]["event_id"]
    state = client.get("/v1/prescriptions/WH-1", headers=auth(KEY_A)).json()
    body = {k: v for k, v in got["body"].items() if k not in ("event_id", "event_at")}
    assert body == state and state["status"] == "approved"
    events = client.get("/v1/webhooks/events", params={"status": "delivered"}, headers=auth(KEY_A)).json()["events"]
    assert [(e["event_id"], e["attempts"], e["event"]) for e in events] == [(got["event_id"], 1, "approved")]


def test_retries_with_backoff_until_delivered_same_event_id(quiet, client, queue, auditor) -> None:
    receiver = Receiver([500, 500])  # took it, answered 500 twice: the HIS sees the event three times
    try:
        register(client, receiver.url)
        decide(queue, auditor, "WH-2")
        clock = Clock()
        deliverer = Deliverer(queue, clock=clock, base_delay=10, max_attempts=5)
        assert deliverer.run_once() == 0
        assert deliverer.run_once() == 0 and len(receiver.received) == 1  # not due before its back-off
        (pending,) = client.get("/v1/webhooks/events", params={"status": "pending"}, headers=auth(KEY_A)).json()[
            "events"
        ]
        assert pending["attempts"] == 1 and pending["last_error"] == "HTTP 500"
        clock.advance(9)
        assert deliverer.run_once() == 0 and len(receiver.received) == 1
        clock.advance(1)  # 10 s after the first failure
        assert deliverer.run_once() == 0 and len(receiver.received) == 2
        clock.advance(19)
        assert deliverer.run_once() == 0 and len(receiver.received) == 2  # 20 s after the second
        clock.advance(1)
        assert deliverer.run_once() == 1 and len(receiver.received) == 3
        assert all(r["signed"] for r in receiver.received)
        assert len({r["event_id"] for r in receiver.received}) == 1  # repeats carry the same id
        assert len({json.dumps(r["body"], sort_keys=True) for r in receiver.received}) == 1
        (done,) = client.get("/v1/webhooks/events", headers=auth(KEY_A)).json()["events"]
        assert done["status"] == "delivered" and done["attempts"] == 3
    finally:
        receiver.close()


def test_attempts_are_bounded_then_failed(quiet, client, queue, auditor) -> None:
    receiver = Receiver([500] * 10)
    try:
        register(client, receiver.url)
        decide(queue, auditor, "WH-3")
        clock = Clock()
        deliverer = Deliverer(queue, clock=clock, base_delay=10, max_attempts=3)
        for _ in range(6):
            deliverer.run_once()
            clock.advance(3600)
        assert len(receiver.received) == 3
        (failed,) = client.get("/v1/webhooks/events", params={"status": "failed"}, headers=auth(KEY_A)).json()["events"]
        assert failed["attempts"] == 3 and failed["last_error"] == "HTTP 500"
    finally:
        receiver.close()


def test_an_unreachable_receiver_is_retried(quiet, client, queue, auditor, receiver) -> None:
    closed = Receiver()
    url = closed.url
    closed.close()  # nothing listens there now
    register(client, url)
    decide(queue, auditor, "WH-4")
    clock = Clock()
    deliverer = Deliverer(queue, clock=clock, timeout=5)
    assert deliverer.run_once() == 0
    (pending,) = client.get("/v1/webhooks/events", headers=auth(KEY_A)).json()["events"]
    assert pending["status"] == "pending" and pending["last_error"].startswith("ConnectError")
    register(client, receiver.url)  # the HIS fixes its URL: the retry goes there
    clock.advance(10)
    assert deliverer.run_once() == 1 and receiver.received[0]["event_id"] == pending["event_id"]


def test_a_key_sees_only_its_facilities(quiet, client, queue, auditor, receiver) -> None:
    register(client, receiver.url, KEY_A)
    register(client, receiver.url, KEY_B)
    decide(queue, auditor, "WH-A", FACILITY_A)
    decide(queue, auditor, "WH-B", FACILITY_B)
    seen_a = client.get("/v1/webhooks/events", headers=auth(KEY_A)).json()["events"]
    seen_b = client.get("/v1/webhooks/events", headers=auth(KEY_B)).json()["events"]
    assert [e["prescription_id"] for e in seen_a] == ["WH-A"]
    assert [e["prescription_id"] for e in seen_b] == ["WH-B"]
    assert [w["facility"] for w in client.get("/v1/webhooks", headers=auth(KEY_A)).json()["webhooks"]] == [FACILITY_A]
    answer = client.put("/v1/webhooks", json={"url": receiver.url, "secret": SECRET, "facility": FACILITY_B},
                        headers=auth(KEY_A))  # fmt: skip
    assert answer.status_code == 422 and answer.json()["field"] == "facility"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"url": "ftp://example.org/x", "secret": SECRET}, "url"),
        ({"url": "http://127.0.0.1/x", "secret": "short"}, "secret"),
        ({"url": "http://127.0.0.1/x", "secret": SECRET, "extra": 1}, "extra"),
    ],
)
def test_registration_is_validated(quiet, client, body: dict[str, Any], field: str) -> None:
    answer = client.put("/v1/webhooks", json=body, headers=auth(KEY_A))
    assert answer.status_code == 422
    assert field in json.dumps(answer.json())
    assert client.put("/v1/webhooks", json=body).status_code == 401
    assert client.get("/v1/webhooks/events", params={"status": "x"}, headers=auth(KEY_A)).status_code == 422


def test_the_service_thread_delivers(monkeypatch, client, queue, auditor, receiver) -> None:
    """With the deliverer thread on (the default), a decision reaches the receiver without a test clock."""
    register(client, receiver.url)
    decide(queue, auditor, "WH-5")
    assert receiver.got.wait(30), "the deliverer thread delivered nothing within 30 s"
    assert receiver.received[0]["signed"] and receiver.received[0]["body"]["id"] == "WH-5"


# --- administration: allow-list, unregister, resend ------------------------------------------------


def test_the_allow_list_refuses_other_hosts_at_registration_and_at_delivery(quiet, make_client, queue, auditor,
                                                                            receiver) -> None:  # fmt: skip
    """webhook_allow = 127.0.0.1 and *.county.cn: a URL of another host is a 422 naming url; an event whose
    registered host left the list is not POSTed (its error says why)."""
    from rx_audit.server.webhooks import allowed

    county = ("*.county.cn",)
    assert allowed("https://his.lzh.county.cn/x", county) and not allowed("https://county.cn/x", county)
    assert not allowed("https://evilcounty.cn/x", ("*.county.cn",)) and allowed("http://a/x", ())
    client = make_client(webhook_allow=("127.0.0.1", "*.county.cn"))
    refused = client.put("/v1/webhooks", json={"url": "https://attacker.example.com/x", "secret": SECRET},
                         headers=auth(KEY_A))  # fmt: skip
    assert refused.status_code == 422 and refused.json()["field"] == "url" and "allow-list" in refused.json()["detail"]
    register(client, receiver.url)  # 127.0.0.1: allowed
    decide(queue, auditor, "WH-AL")
    deliverer = Deliverer(queue, clock=Clock(), allow=("*.county.cn",))  # the list shrank since
    assert deliverer.run_once() == 0 and receiver.received == []
    (pending,) = client.get("/v1/webhooks/events", headers=auth(KEY_A)).json()["events"]
    assert "allow-list" in pending["last_error"]


def test_unregister_stops_delivery_and_is_scoped(quiet, client, queue, auditor, receiver) -> None:
    """DELETE /v1/webhooks: gone from the listing, events not POSTed; 404 when none; another facility's
    registration is out of reach (422 naming facility)."""
    register(client, receiver.url, KEY_A)
    register(client, receiver.url, KEY_B)
    gone = client.delete("/v1/webhooks", headers=auth(KEY_A))
    assert gone.status_code == 200 and gone.json() == {"facility": FACILITY_A, "url": None}
    assert client.get("/v1/webhooks", headers=auth(KEY_A)).json()["webhooks"] == []
    assert client.delete("/v1/webhooks", headers=auth(KEY_A)).status_code == 404
    assert client.delete("/v1/webhooks", params={"facility": FACILITY_B}, headers=auth(KEY_A)).status_code == 422
    assert [w["facility"] for w in client.get("/v1/webhooks", headers=auth(KEY_B)).json()["webhooks"]] == [FACILITY_B]
    decide(queue, auditor, "WH-UN")
    assert Deliverer(queue, clock=Clock()).run_once() == 0 and receiver.received == []
    assert client.delete("/v1/webhooks").status_code == 401


def test_a_failed_event_is_resent_by_hand_with_the_same_event_id(quiet, client, queue, auditor) -> None:
    """POST /v1/webhooks/events/{id}/resend: a failed event is pending again with fresh attempts and is
    delivered with its event id; a pending one is 409, another facility's 404."""
    receiver = Receiver([500] * 2)
    try:
        register(client, receiver.url)
        decide(queue, auditor, "WH-RS")
        clock = Clock()
        deliverer = Deliverer(queue, clock=clock, max_attempts=2)
        for _ in range(3):
            deliverer.run_once()
            clock.advance(3600)
        (failed,) = client.get("/v1/webhooks/events", params={"status": "failed"}, headers=auth(KEY_A)).json()["events"]
        event = failed["event_id"]
        assert client.post(f"/v1/webhooks/events/{event}/resend", headers=auth(KEY_B)).status_code == 404
        again = client.post(f"/v1/webhooks/events/{event}/resend", headers=auth(KEY_A))
        assert again.status_code == 200 and again.json() == {"event_id": event, "status": "pending", "attempts": 0,
                                                              "was": "failed"}  # fmt: skip
        assert client.post(f"/v1/webhooks/events/{event}/resend", headers=auth(KEY_A)).status_code == 409
        assert deliverer.run_once() == 1
        assert [r["event_id"] for r in receiver.received] == [event] * 3 and receiver.received[-1]["signed"]
        (done,) = client.get("/v1/webhooks/events", headers=auth(KEY_A)).json()["events"]
        assert done["status"] == "delivered" and done["attempts"] == 1
    finally:
        receiver.close()
