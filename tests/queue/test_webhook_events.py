"""Webhook events in the queue, on SQLite and PostgreSQL (the application role): one event per decision,
written in the decision's transaction, for facilities with a webhook only; claims lease events so two
deliverers never take the same one; delivery state by facility."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from rx_audit.errors import StateError
from rx_audit.queue import ReviewQueue
from tests.queue.test_queue_api import result, rx

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def test_a_decision_adds_exactly_one_event_with_the_state_body(queue: ReviewQueue) -> None:
    queue.set_webhook("LZH", "http://127.0.0.1:9/hook", "s" * 32, now=T0)
    item = queue.submit(rx(1), result(1))
    assert queue.webhook_events(None) == []  # queued, not decided: no event
    queue.claim(item.id, "ph1", now=T0)
    assert queue.webhook_events(None) == []
    queue.approve(item.id, "ph1", "A01", "已核实", now=T0 + timedelta(minutes=1))
    events = queue.webhook_events(["LZH"])
    assert len(events) == 1
    event = events[0]
    assert event["status"] == "pending" and event["event"] == "approved" and event["attempts"] == 0
    assert event["event_id"].startswith("evt_") and event["prescription_id"] == "RX1"
    claimed = queue.claim_webhook_events(now=T0 + timedelta(minutes=2))
    assert [c["event_id"] for c in claimed] == [event["event_id"]]
    body = json.loads(claimed[0]["body"])
    assert body["id"] == "RX1" and body["status"] == "approved" and body["release"] is True
    assert body["event_id"] == event["event_id"] and body["item"] == str(item.id)
    assert body["decision"]["action"] == "approve" and body["decision"]["by"] == "ph1"
    assert body["decision"]["reason_code"] == "A01" and body["decision"]["note"] == "已核实"
    assert claimed[0]["url"] == "http://127.0.0.1:9/hook" and claimed[0]["secret"] == "s" * 32


def test_return_and_double_sign_each_add_an_event_and_a_refused_decision_adds_none(queue: ReviewQueue) -> None:
    queue.set_webhook("LZH", "http://127.0.0.1:9/hook", "s" * 32)
    item = queue.submit(rx(1), result(1))
    queue.claim(item.id, "ph1")
    with pytest.raises(StateError):
        queue.approve(item.id, "ph2", "A01")  # not ph2's claim: nothing written, no event
    assert queue.webhook_events(None) == []
    queue.return_to_doctor(item.id, "ph1", "R01", "剂量过大")
    queue.double_sign("RX1", "D1", "患者病情需要")
    events = queue.webhook_events(["LZH"])
    assert sorted(e["event"] for e in events) == ["double_signed", "returned"]
    assert len({e["event_id"] for e in events}) == 2


def test_only_facilities_with_a_webhook_get_events_and_listing_is_scoped(queue: ReviewQueue) -> None:
    queue.set_webhook("A", "http://127.0.0.1:9/a", "a" * 32)
    for n, facility in ((1, "A"), (2, "B")):
        item = queue.submit(rx(n, facility=facility), result(n))
        queue.claim(item.id, "ph")
        queue.approve(item.id, "ph", "A01")
    assert [e["facility"] for e in queue.webhook_events(None)] == ["A"]
    assert queue.webhook_events(["B"]) == []
    assert queue.webhooks(["A", "B"])[0]["url"] == "http://127.0.0.1:9/a"
    assert "secret" not in queue.webhooks(["A"])[0]
    queue.set_webhook("A", "http://127.0.0.1:9/a2", "b" * 32)  # replaced, not added
    assert [w["url"] for w in queue.webhooks(["A"])] == ["http://127.0.0.1:9/a2"]


@pytest.mark.parametrize("policy, event", [("escalate", "escalated"), ("pass", "auto_passed")])
def test_timeout_escalation_and_auto_pass_add_events(db_url: str, policy: str, event: str) -> None:
    with ReviewQueue(db_url, timeout_policy=policy, timeout_seconds=60) as queue:  # type: ignore[arg-type]
        queue.set_webhook("LZH", "http://127.0.0.1:9/hook", "s" * 32)
        queue.submit(rx(1), result(1))
        assert queue.apply_timeout_policy(now=datetime.now(UTC) + timedelta(hours=1)) == 1
        events = queue.webhook_events(["LZH"])
        assert [e["event"] for e in events] == [event]
        body = json.loads(queue.claim_webhook_events(now=datetime.now(UTC) + timedelta(hours=2))[0]["body"])
        assert body["status"] == event
        assert (body["decision"] or {}).get("action") == ("timeout_pass" if policy == "pass" else None)


def test_a_claim_leases_the_event_and_outcomes_are_recorded(queue: ReviewQueue) -> None:
    queue.set_webhook("LZH", "http://127.0.0.1:9/hook", "s" * 32)
    item = queue.submit(rx(1), result(1))
    queue.claim(item.id, "ph1", now=T0)
    queue.approve(item.id, "ph1", "A01", now=T0)
    first = queue.claim_webhook_events(now=T0, lease_seconds=60)
    assert len(first) == 1 and first[0]["attempts"] == 1
    assert queue.claim_webhook_events(now=T0 + timedelta(seconds=59)) == []  # leased: nobody else takes it
    again = queue.claim_webhook_events(now=T0 + timedelta(seconds=61))  # the deliverer died: retried
    assert [e["event_id"] for e in again] == [first[0]["event_id"]] and again[0]["attempts"] == 2
    queue.finish_webhook_event(first[0]["event_id"], delivered=False, error="HTTP 500",
                               retry_at=T0 + timedelta(minutes=5), now=T0 + timedelta(seconds=62))  # fmt: skip
    (state,) = queue.webhook_events(["LZH"], status="pending")
    assert state["attempts"] == 2 and state["last_error"] == "HTTP 500"
    assert queue.claim_webhook_events(now=T0 + timedelta(minutes=4)) == []
    assert len(queue.claim_webhook_events(now=T0 + timedelta(minutes=5))) == 1
    queue.finish_webhook_event(first[0]["event_id"], delivered=True, now=T0 + timedelta(minutes=5))
    (done,) = queue.webhook_events(["LZH"], status="delivered")
    assert done["attempts"] == 3 and done["last_error"] is None and done["next_attempt_at"] is None
    queue.finish_webhook_event(first[0]["event_id"], delivered=False, error="late", now=T0 + timedelta(minutes=6))
    assert queue.webhook_events(["LZH"], status="delivered")[0]["last_error"] is None  # delivered stays delivered
