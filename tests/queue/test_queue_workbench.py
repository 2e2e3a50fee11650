"""What the pharmacist's workbench needs of the queue (issue 13): giving an item back or skipping it
(logged, place kept), renewing the lease while the item is open, claim_next leaving out the items a
pharmacist skipped, and reading any stored prescription — flagged or not — with its versions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rx_audit.errors import NotFoundError, QueueError, StateError
from rx_audit.queue import ReviewQueue
from tests.queue.test_queue_api import result, rx


def test_give_back_returns_the_item_to_its_place_and_logs_it(queue: ReviewQueue) -> None:
    first = queue.submit(rx(1), result(1, "critical"))
    queue.submit(rx(2), result(2, "warning"))
    assert first is not None
    claimed = queue.claim_next("ph01")
    assert claimed is not None and claimed.id == first.id
    released = queue.release(first.id, "ph01", action="give_back", note="需要请教上级药师")
    assert released.status == "pending" and released.claimed_by is None and released.lease_expires_at is None
    # Its place in line is kept: the most severe item is still the next one claimed.
    again = queue.claim_next("ph02")
    assert again is not None and again.id == first.id
    trail = queue.get(first.id).trail
    assert [t.action for t in trail] == ["submitted", "claim", "give_back", "claim"]
    assert trail[2].actor == "ph01" and "需要请教上级药师" in (trail[2].reason or "")
    assert queue.verify().ok


def test_skip_is_logged_and_claim_next_can_leave_skipped_items_out(queue: ReviewQueue) -> None:
    first = queue.submit(rx(1), result(1, "critical"))
    second = queue.submit(rx(2), result(2, "warning"))
    assert first is not None and second is not None
    queue.claim_next("ph01")
    queue.release(first.id, "ph01", action="skip")
    nxt = queue.claim_next("ph01", exclude=[first.id])
    assert nxt is not None and nxt.id == second.id
    assert queue.claim_next("ph01", exclude=[first.id, second.id]) is None
    assert [t.action for t in queue.get(first.id).trail][-1] == "skip"


def test_only_the_holder_can_give_back_and_a_bad_action_is_refused(queue: ReviewQueue) -> None:
    item = queue.submit(rx(1), result(1))
    assert item is not None
    with pytest.raises(StateError):
        queue.release(item.id, "ph01")  # not claimed
    queue.claim(item.id, "ph01")
    with pytest.raises(StateError):
        queue.release(item.id, "ph02")
    with pytest.raises(QueueError):
        queue.release(item.id, "ph01", action="drop")  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        queue.release(item.id, "ph01", scope=["OTHER"])
    assert queue.get(item.id).item.status == "claimed"


def test_a_double_signed_item_given_back_stays_double_signed(queue: ReviewQueue) -> None:
    item = queue.submit(rx(1), result(1, "critical"))
    assert item is not None
    queue.claim(item.id, "ph01")
    queue.return_to_doctor(item.id, "ph01", "R06", "请核实肾功能")
    queue.double_sign("RX1", "D1", "患者已透析，肾内科会诊同意")
    queue.claim(item.id, "ph02")
    back = queue.release(item.id, "ph02")
    assert back.status == "double_signed" and back.double_sign_reason


def test_renew_lease_extends_without_a_trail_row(queue: ReviewQueue) -> None:
    item = queue.submit(rx(1), result(1))
    assert item is not None
    start = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
    claimed = queue.claim(item.id, "ph01", lease_seconds=600, now=start)
    renewed = queue.renew_lease(item.id, "ph01", 600, now=start + timedelta(minutes=9))
    assert renewed.lease_expires_at is not None and claimed.lease_expires_at is not None
    assert renewed.lease_expires_at > claimed.lease_expires_at
    stored = queue.get(item.id).item.lease_expires_at
    assert stored is not None and stored.replace(tzinfo=UTC) == start + timedelta(minutes=19)
    # Still held at minute 15 (the first lease alone would have run out at minute 10).
    assert queue.release_expired(now=start + timedelta(minutes=15)) == 0
    assert [t.action for t in queue.get(item.id).trail] == ["submitted", "claim"]
    with pytest.raises(StateError):
        queue.renew_lease(item.id, "ph02")


def test_prescription_reads_any_stored_version_flagged_or_not(queue: ReviewQueue) -> None:
    clean = rx(1)
    queue.submit(clean, result(1, severity=None))
    record = queue.prescription("RX1")
    assert record.item is None and record.result is not None and record.result["flagged"] is False
    assert record.prescription == clean and record.version == 1
    flagged = queue.submit(rx(2), result(2, "critical"))
    assert flagged is not None
    queue.claim(flagged.id, "ph01")
    queue.return_to_doctor(flagged.id, "ph01", "R06", "请换药")
    v2 = rx(2)
    v2["items"][0]["drug"] = "格列喹酮"
    assert queue.resubmit(v2, result(2, severity=None), doctor_id="D2") is None  # corrected: not flagged
    newest = queue.prescription("RX2")
    assert newest.version == 2 and newest.item is None
    assert [(v.version, v.status) for v in newest.versions] == [(1, "returned"), (2, None)]
    assert [d.action for d in newest.decisions] == ["return"]
    first = queue.prescription("RX2", version=1)
    assert first.item is not None and first.item.status == "returned"
    assert first.prescription["items"][0]["drug"] == "二甲双胍"
    with pytest.raises(NotFoundError):
        queue.prescription("RX2", scope=["OTHER"])
    with pytest.raises(NotFoundError):
        queue.prescription("NOPE")


def test_statistics_per_pharmacist_interventions_and_data_days(queue: ReviewQueue) -> None:
    """Per pharmacist: decisions, overrides (passes) with the critical ones, time from claim to
    decision; 干预成功率 = returns the doctor answered with a new version / all returns; the issue
    days that hold data (the statistics page opens on them)."""
    items = [queue.submit(rx(n), result(n, "critical" if n % 2 else "warning")) for n in range(1, 5)]
    start = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
    for item, who in zip(items, ["ph01", "ph01", "ph01", "ph02"], strict=True):
        assert item is not None
        queue.claim(item.id, who, now=start)
    assert items[0] and items[1] and items[2] and items[3]
    queue.approve(items[0].id, "ph01", "A01", "已核实", now=start + timedelta(seconds=60))  # critical passed
    queue.return_to_doctor(items[1].id, "ph01", "R06", now=start + timedelta(seconds=120))
    queue.return_to_doctor(items[2].id, "ph01", "R06", now=start + timedelta(seconds=180))
    queue.return_to_doctor(items[3].id, "ph02", "R06", now=start + timedelta(seconds=30))
    changed = rx(2)
    changed["items"][0]["dose"] = {"value": 250, "unit": "mg"}
    queue.resubmit(changed, result(2, severity=None), doctor_id="D2")  # the doctor accepted
    queue.double_sign("RX3", "D3", "病情需要")  # the doctor insisted
    stats = queue.statistics()
    by = {p.pharmacist: p for p in stats.by_pharmacist}
    assert by["ph01"].decisions == 2 and by["ph01"].approved == 1 and by["ph01"].critical_passed == 1
    assert by["ph01"].review_seconds.median == 90.0  # 60 s and 120 s; RX3 went back in line (double-signed)
    assert by["ph02"].returned == 1 and by["ph02"].overrides.value == 0
    assert (stats.intervention_rate.numerator, stats.intervention_rate.denominator) == (1, 3)
    assert stats.returns_insisted == 1
    assert stats.first_day == stats.last_day == "2025-03-26"
    assert queue.statistics(date_from="2030-01-01").first_day == "2025-03-26"  # whatever the period


def test_prescription_payloads_count_each_prescription_once_in_its_newest_version(queue: ReviewQueue) -> None:
    item = queue.submit(rx(1), result(1, "critical"))
    queue.submit(rx(2), result(2, severity=None))
    queue.submit(rx(3, facility="OTHER"), result(3, severity=None))
    assert item is not None
    queue.claim(item.id, "ph01")
    queue.return_to_doctor(item.id, "ph01", "R06")
    changed = rx(1)
    changed["items"][0]["drug"] = "格列喹酮"
    queue.resubmit(changed, result(1, severity=None), doctor_id="D1")
    rows = queue.prescription_payloads("2025-03-26", "2025-03-26", scope=["LZH"])
    assert [(facility, payload["id"], payload["items"][0]["drug"]) for facility, _, payload in rows] == [
        ("LZH", "RX2", "二甲双胍"),
        ("LZH", "RX1", "格列喹酮"),
    ]
    assert queue.prescription_payloads(date_from="2025-03-27") == []
