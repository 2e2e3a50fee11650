"""The review queue's API on SQLite and PostgreSQL: states, idempotency, routing, trail, statistics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from rx_audit.contract import AuditResult, Finding
from rx_audit.errors import NotFoundError, QueueError, StateError
from rx_audit.queue import ReviewQueue


def rx(n: int, facility: str = "LZH", department: str = "全科", **extra) -> dict:
    return {
        "id": f"RX{n}",
        "issued_at": "2025-03-26T10:15:00+08:00",
        "facility": {"id": facility, "name": facility},
        "prescriber": {"id": f"D{n % 3}"},
        "department": department,
        "patient": {"id": f"P{n}", "egfr": 24},
        "items": [{"id": "1", "drug": "二甲双胍", "dose": {"value": 500, "unit": "mg"}}],
        **extra,
    }


def result(
    n: int,
    severity: str | None = "warning",
    rule: str = "metformin.renal",
    category: str = "dose",
    rulebook: str = "sha256:aaa",
) -> AuditResult:
    findings = (
        [Finding(rule=rule, category=category, severity=severity, item="1", message="m", source="f.yaml:1")]
        if severity
        else []
    )
    flagged = severity in ("warning", "critical")
    return AuditResult(id=f"RX{n}", flagged=flagged, severity=severity, rulebook=rulebook, findings=findings)


def test_submit_is_idempotent_and_unflagged_is_stored_without_item(queue: ReviewQueue) -> None:
    first = queue.submit(rx(1), result(1))
    again = queue.submit(rx(1), result(1))
    assert first is not None and again is not None and first.id == again.id
    assert queue.count() == 1
    assert queue.submit(rx(2), result(2, severity="info")) is None
    assert queue.submit(rx(3), result(3, severity=None)) is None
    assert queue.count() == 1
    hits = queue.search(verdict="clean")
    assert {h.prescription_id for h in hits} == {"RX2", "RX3"}
    # A new rulebook audits the same version again: a new item.
    other = queue.submit(rx(1), result(1, rulebook="sha256:bbb"))
    assert other is not None and other.id != first.id
    assert first.status == "pending" and first.categories == ["dose"] and first.facility_id == "LZH"
    assert first.day == "2025-03-26"


def test_payload_is_kept_as_received(queue: ReviewQueue) -> None:
    payload = rx(1, his_extra={"ward": "3病区"})
    item = queue.submit(payload, result(1))
    assert item is not None
    detail = queue.get(item.id)
    assert detail.prescription == payload
    assert detail.result["findings"][0]["rule"] == "metformin.renal"


def test_result_must_belong_to_prescription(queue: ReviewQueue) -> None:
    with pytest.raises(QueueError):
        queue.submit(rx(1), result(2))


def test_claim_next_most_severe_then_oldest_and_routing(queue: ReviewQueue) -> None:
    queue.submit(rx(1, facility="A"), result(1, "warning"))
    queue.submit(rx(2, facility="B"), result(2, "critical"))
    queue.submit(rx(3, facility="A"), result(3, "critical", category="interaction"))
    queue.submit(rx(4, facility="A", department="儿科"), result(4, "warning"))
    assert queue.claim_next("ph", facilities=["C"]) is None
    first = queue.claim_next("ph1")
    assert first is not None and first.prescription_id == "RX2"  # critical, oldest
    second = queue.claim_next("ph2", facilities=["A"])
    assert second is not None and second.prescription_id == "RX3"
    assert queue.claim_next("ph3", category="interaction") is None
    by_department = queue.claim_next("ph3", department="儿科")
    assert by_department is not None and by_department.prescription_id == "RX4"
    last = queue.claim_next("ph4", severity="warning")
    assert last is not None and last.prescription_id == "RX1" and last.claimed_by == "ph4"
    assert queue.claim_next("ph5") is None


def test_approve_return_double_sign_resubmit(queue: ReviewQueue) -> None:
    item = queue.submit(rx(1), result(1))
    with pytest.raises(StateError):
        queue.approve(item.id, "ph1", "A01")  # not claimed
    claimed = queue.claim(item.id, "ph1")
    with pytest.raises(StateError):
        queue.claim(item.id, "ph2")  # live lease of someone else
    with pytest.raises(StateError):
        queue.approve(item.id, "ph2", "A01")
    with pytest.raises(QueueError):
        queue.return_to_doctor(item.id, "ph1", "A01")  # an approve code for a return
    returned = queue.return_to_doctor(claimed.id, "ph1", "R02", "剂量过大")
    assert returned.status == "returned" and returned.reason_code == "R02"
    with pytest.raises(StateError):
        queue.claim(item.id, "ph1")
    signed = queue.double_sign("RX1", "D1", "患者已透析，剂量经肾内科确认")
    assert signed.status == "double_signed" and signed.double_sign_reason
    again = queue.claim_next("ph2")
    assert again is not None and again.id == item.id
    queue.return_to_doctor(item.id, "ph2", "R06")
    with pytest.raises(QueueError):
        queue.double_sign("RX1", "D1", "  ")
    v2 = queue.resubmit(rx(1), result(1, "critical"), doctor_id="D1")
    assert v2 is not None and v2.version == 2 and v2.previous_item_id == item.id and v2.status == "pending"
    with pytest.raises(StateError):
        queue.resubmit(rx(1), result(1), doctor_id="D1")  # v2 is not returned
    claimed = queue.claim_next("ph1")
    queue.approve(claimed.id, "ph1", "A04", "已沟通")
    detail = queue.get(v2.id)
    assert [v.version for v in detail.versions] == [1, 2]
    assert [d.action for d in detail.decisions] == ["return", "double_sign", "return", "approve"]
    actions = [t.action for t in detail.trail]
    assert actions == [
        "submitted",
        "claim",
        "return",
        "double_sign",
        "claim",
        "return",
        "submitted",
        "resubmitted",
        "claim",
        "approve",
    ]
    assert all(t.at is not None and t.actor for t in detail.trail)
    with pytest.raises(NotFoundError):
        queue.get(999_999)
    with pytest.raises(NotFoundError):
        queue.double_sign("NOPE", "D1", "x")


def test_resubmit_that_passes_resolves(queue: ReviewQueue) -> None:
    item = queue.submit(rx(1), result(1))
    queue.claim(item.id, "ph")
    queue.return_to_doctor(item.id, "ph", "R02")
    assert queue.resubmit(rx(1), result(1, severity=None), doctor_id="D1") is None
    assert queue.get(item.id).trail[-1].action == "resubmitted"
    assert queue.search(prescription_id="RX1", verdict="clean")[0].version == 2


def test_lease_expiry(queue: ReviewQueue) -> None:
    item = queue.submit(rx(1), result(1))
    now = datetime.now(UTC)
    queue.claim(item.id, "ph1", lease_seconds=60, now=now)
    assert queue.release_expired(now + timedelta(seconds=30)) == 0
    assert queue.release_expired(now + timedelta(seconds=61)) == 1
    assert queue.get(item.id).item.status == "pending"
    # claim_next also takes over expired leases (logged)
    queue.claim(item.id, "ph1", lease_seconds=60, now=now)
    taken = queue.claim_next("ph2", now=now + timedelta(seconds=120))
    assert taken is not None and taken.id == item.id and taken.claimed_by == "ph2"
    with pytest.raises(StateError):
        queue.approve(item.id, "ph1", "A01")
    trail = [t.action for t in queue.get(item.id).trail]
    assert trail.count("lease_expired") == 2


@pytest.mark.parametrize("policy", ["hold", "escalate", "pass"])
def test_timeout_policy_is_logged(db_url: str, policy: str) -> None:
    queue = ReviewQueue(db_url, timeout_policy=policy, timeout_seconds=60)
    try:
        start = datetime.now(UTC)  # before the items are queued: the check below never depends on speed
        a = queue.submit(rx(1), result(1, "critical"))
        b = queue.submit(rx(2), result(2, "warning"))
        later = datetime.now(UTC) + timedelta(seconds=120)
        assert queue.apply_timeout_policy(start) == 0
        assert queue.apply_timeout_policy(later) == 2
        assert queue.apply_timeout_policy(later) == 0  # once
        expected = {"hold": "pending", "escalate": "escalated", "pass": "auto_passed"}[policy]
        for item in (a, b):
            detail = queue.get(item.id)
            assert detail.item.status == expected
            assert detail.trail[-1].action == f"timeout_{policy}" and detail.trail[-1].reason
        if policy == "escalate":
            # escalated items come first and stay claimable
            queue.submit(rx(3), result(3, "critical"))
            first = queue.claim_next("ph")
            assert first is not None and first.prescription_id == "RX1"
        if policy == "pass":
            assert queue.claim_next("ph") is None
            assert queue.statistics()["auto_passed"] == 2
    finally:
        queue.close()


def test_trail_and_decisions_are_append_only(database, queue: ReviewQueue) -> None:
    item = queue.submit(rx(1), result(1))
    queue.claim(item.id, "ph")
    queue.approve(item.id, "ph", "A01")
    # The triggers hold even for the tables' owner; on PostgreSQL the application role is refused
    # before they fire (no UPDATE/DELETE/TRUNCATE privilege).
    owner = create_engine(database.owner_url) if database.roles_separate else queue._engine
    try:
        for table in ("rx_audit_trail", "rx_decision"):
            for statement in (f"UPDATE {table} SET actor = 'mallory'", f"DELETE FROM {table}"):
                with pytest.raises(DBAPIError, match="append-only"), owner.begin() as connection:
                    connection.execute(text(statement))
                if database.roles_separate:
                    with pytest.raises(DBAPIError, match="permission denied"), queue._engine.begin() as connection:
                        connection.execute(text(statement))
        assert [t.actor for t in queue.get(item.id).trail] == ["his", "ph", "ph"]
        if queue.is_postgres:
            with pytest.raises(DBAPIError, match="append-only"), owner.begin() as connection:
                connection.execute(text("TRUNCATE rx_audit_trail"))
    finally:
        if owner is not queue._engine:
            owner.dispose()


def test_paging_counts_search_and_reasons(queue: ReviewQueue) -> None:
    for n in range(30):
        queue.submit(rx(n, facility="A" if n % 2 else "B"), result(n, "critical" if n % 5 == 0 else "warning"))
    page1 = queue.list_items(status="pending", limit=10)
    page2 = queue.list_items(status="pending", limit=10, offset=10)
    assert len(page1) == 10 and not {i.id for i in page1} & {i.id for i in page2}
    assert page1[0].severity == "critical"
    assert queue.count(status="pending") == 30 and queue.count(facility="A") == 15
    assert queue.count(severity="critical") == 6 and queue.count(category="dose") == 30
    assert queue.oldest_pending_age_seconds() is not None
    assert len(queue.search(facility_id="A", limit=100)) == 15
    assert queue.search(patient_id="P7")[0].prescription_id == "RX7"
    assert queue.search(date_from="2025-03-27") == []
    assert len(queue.search(date_from="2025-03-26", date_to="2025-03-26", limit=5, offset=28)) == 2
    codes = [r.code for r in queue.reasons("return")]
    assert "R02" in codes and all(r.label for r in queue.reasons("approve"))


def test_reasons_are_extensible(db_url: str, tmp_path) -> None:
    extra = tmp_path / "reasons.yaml"
    extra.write_text(
        "approve:\n  - {code: A50, label: 院内专家会诊同意}\nreturn:\n  - {code: R02, label: 剂量不当（本院）}\n",
        encoding="utf-8",
    )
    queue = ReviewQueue(db_url, reasons=extra)
    try:
        assert "A50" in [r.code for r in queue.reasons("approve")]
        assert [r.label for r in queue.reasons("return") if r.code == "R02"] == ["剂量不当（本院）"]
        item = queue.submit(rx(1), result(1))
        queue.claim(item.id, "ph")
        assert queue.approve(item.id, "ph", "A50").reason_code == "A50"
    finally:
        queue.close()


def test_statistics(queue: ReviewQueue) -> None:
    for n in range(10):
        queue.submit(
            rx(n, facility="A" if n < 6 else "B"),
            result(n, "warning", rule="r.noisy" if n % 2 else "r.good", category="dose"),
        )
    queue.submit(rx(50), result(50, None))
    for n in range(10):
        item = queue.claim_next("ph")
        if item.rules == ["r.noisy"]:
            queue.approve(item.id, "ph", "A02")
        elif n < 8:
            queue.return_to_doctor(item.id, "ph", "R02")
    stats = queue.statistics()
    assert stats["prescriptions"] == 11 and stats["flagged"] == 10
    assert stats["held_rate"] == pytest.approx(10 / 11, abs=1e-3)
    assert stats["approved"] == 5 and stats["decided"] == stats["approved"] + stats["returned"]
    assert stats["pass_after_review_rate"] == pytest.approx(stats["approved"] / stats["decided"], abs=1e-3)
    overrides = {row["rule"]: row for row in stats["rule_override"]}
    assert overrides["r.noisy"]["override_rate"] == 1.0
    assert overrides["r.good"]["override_rate"] == 0.0
    assert stats["by_facility"] == {"A": 6, "B": 4}
    assert stats["by_day"] == {"2025-03-26": 10}
    assert stats["time_to_decision_seconds"]["count"] == stats["decided"]
    assert queue.statistics(date_from="2025-04-01")["flagged"] == 0


def test_statistics_typed_rates_and_groups(queue: ReviewQueue) -> None:
    from rx_audit.queue import QueueStatistics

    for n in range(6):
        queue.submit(rx(n, facility="A" if n < 4 else "B"), result(n, "warning", rule="r.x" if n % 2 else "r.y"))
    queue.submit(rx(50, facility="B"), result(50, None))
    decided = {}
    for _ in range(4):
        item = queue.claim_next("ph")
        if item.rules == ["r.x"]:
            decided[item.id] = queue.approve(item.id, "ph", "A02").status
        else:
            decided[item.id] = queue.return_to_doctor(item.id, "ph", "R02").status
    stats = queue.statistics()
    assert isinstance(stats, QueueStatistics)
    assert stats.total == 6 and stats.total != stats.prescriptions == 7  # items and audits are not the same count
    assert (stats.held_rate.numerator, stats.held_rate.denominator) == (6, 7)
    assert stats.decided == 4 == stats.pass_after_review_rate.denominator == stats.returned_rate.denominator
    assert stats.pass_after_review_rate.numerator + stats.returned_rate.numerator == 4
    assert stats.time_to_decision_seconds.count == 4
    facilities = {g.key: g for g in stats.by_facility}
    assert facilities["A"].prescriptions == 4 and facilities["A"].held_rate.value == 1.0
    assert facilities["B"].prescriptions == 3 and facilities["B"].flagged == 2 and facilities["B"].items == 2
    assert facilities["B"].held_rate.numerator == 2 and facilities["B"].held_rate.denominator == 3
    rules = {g.key: g for g in stats.by_rule}
    assert rules["r.x"].held_rate is None and rules["r.x"].items == 3
    overrides = {o.rule: o for o in stats.rule_override}
    assert overrides["r.x"].override_rate.value == pytest.approx(
        overrides["r.x"].approved / overrides["r.x"].decided
    )
    assert [g.key for g in stats.by_day] == ["2025-03-26"] and stats.by_day[0].decided == 4
    assert stats.by_status["pending"] == 2 and stats.pending == 2 and stats.oldest_pending_age_seconds is not None
    # the same figures through the flat view older callers read
    assert stats["held_rate"] == stats.held_rate.value and stats["by_facility"] == {"A": 4, "B": 2}
    assert "items" not in stats.to_dict()
    # scoped: only facility B's audits and items
    scoped = queue.statistics(scope=["B"])
    assert scoped.prescriptions == 3 and scoped.total == 2 and [g.key for g in scoped.by_facility] == ["B"]


def test_claimed_by_filter(queue: ReviewQueue) -> None:
    for n in range(4):
        queue.submit(rx(n), result(n))
    mine = queue.claim_next("ph1")
    queue.claim_next("ph2")
    assert [i.id for i in queue.list_items(status="claimed", claimed_by="ph1")] == [mine.id]
    assert queue.count(claimed_by="ph1") == 1 and queue.count(claimed_by=["ph1", "ph2"]) == 2
    assert queue.count(claimed_by="ph1", scope=["OTHER"]) == 0
