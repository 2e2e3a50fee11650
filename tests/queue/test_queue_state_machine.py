"""Hypothesis stateful test of the review state machine: submit/claim/expire/decide/return/resubmit/double-sign.

One database per parametrised run; every hypothesis example routes its items to its own facility
id, so examples never see each other's items.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from rx_audit.contract import AuditResult, Finding
from rx_audit.errors import ReasonRequiredError, StateError
from rx_audit.queue import READY_STATUSES, ReviewQueue

PHARMACISTS = ["ph1", "ph2"]
SEVERITIES = ["warning", "critical", None]


def make(rx_id: str, facility: str, severity: str | None) -> tuple[dict, AuditResult]:
    payload = {"id": rx_id, "facility": {"id": facility}, "items": [{"drug": "二甲双胍"}]}
    findings = [Finding(rule="r", category="dose", severity=severity, message="m", source="s:1")] if severity else []
    return payload, AuditResult(
        id=rx_id, flagged=severity is not None, severity=severity, rulebook="sha256:sm", findings=findings
    )


def run_machine(queue: ReviewQueue) -> None:
    counter = itertools.count()

    class Machine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.facility = "F" + uuid.uuid4().hex[:10]
            self.now = datetime.now(UTC)
            self.model: dict[int, dict] = {}  # item id -> {status, claimed_by, lease, rx}
            self.latest: dict[str, int] = {}  # prescription id -> latest item id

        def _check(self, item_id: int) -> None:
            actual = queue.get(item_id).item
            assert actual.status == self.model[item_id]["status"], (item_id, actual, self.model[item_id])

        @rule(severity=st.sampled_from(SEVERITIES), twice=st.booleans())
        def submit(self, severity: str | None, twice: bool) -> None:
            rx_id = f"{self.facility}-{next(counter)}"
            payload, result = make(rx_id, self.facility, severity)
            item = queue.submit(payload, result)
            if twice:
                again = queue.submit(payload, result)
                assert (again.id if again else None) == (item.id if item else None)
            if severity is None:
                assert item is None
                return
            assert item is not None and item.status == "pending"
            self.model[item.id] = {
                "status": "pending",
                "claimed_by": None,
                "lease": None,
                "rx": rx_id,
                "severity": severity,
            }
            self.latest[rx_id] = item.id

        @rule(pharmacist=st.sampled_from(PHARMACISTS), lease=st.integers(min_value=1, max_value=120))
        def claim_next(self, pharmacist: str, lease: int) -> None:
            item = queue.claim_next(pharmacist, facilities=[self.facility], lease_seconds=lease, now=self.now)
            claimable = [
                i
                for i, m in self.model.items()
                if m["status"] in READY_STATUSES or (m["status"] == "claimed" and m["lease"] < self.now)
            ]
            if item is None:
                assert claimable == []
                return
            assert item.id in claimable
            # expired leases were released on the way
            for m in self.model.values():
                if m["status"] == "claimed" and m["lease"] < self.now:
                    m.update(status="pending", claimed_by=None)
            self.model[item.id].update(
                status="claimed", claimed_by=pharmacist, lease=self.now + timedelta(seconds=lease)
            )

        @rule(seconds=st.integers(min_value=1, max_value=200))
        def time_passes(self, seconds: int) -> None:
            self.now += timedelta(seconds=seconds)

        @rule()
        def release_expired(self) -> None:
            released = queue.release_expired(self.now)
            mine = [m for m in self.model.values() if m["status"] == "claimed" and m["lease"] < self.now]
            assert released >= len(mine)  # other examples' items are long gone from the queue
            for m in mine:
                m.update(status="pending", claimed_by=None)

        @precondition(lambda self: self.model)
        @rule(
            data=st.data(),
            approve=st.booleans(),
            pharmacist=st.sampled_from(PHARMACISTS),
            comment=st.sampled_from(["", "  ", "已核实"]),
        )
        def decide(self, data: st.DataObject, approve: bool, pharmacist: str, comment: str) -> None:
            item_id = data.draw(st.sampled_from(sorted(self.model)))
            m = self.model[item_id]
            allowed = m["status"] == "claimed" and m["claimed_by"] == pharmacist
            # Passing a critical finding needs a reason code and a comment (one click is not enough).
            needs_reason = approve and m["severity"] == "critical" and not comment.strip()
            try:
                if approve:
                    queue.approve(item_id, pharmacist, "A01", comment)
                else:
                    queue.return_to_doctor(item_id, pharmacist, "R02", comment)
            except StateError:
                assert not allowed
                return
            except ReasonRequiredError:
                assert allowed and needs_reason
                self._check(item_id)  # refused: nothing changed
                return
            assert allowed and not needs_reason
            m.update(status="approved" if approve else "returned", claimed_by=pharmacist)

        @precondition(lambda self: self.latest)
        @rule(data=st.data(), severity=st.sampled_from(SEVERITIES), double_sign=st.booleans())
        def doctor(self, data: st.DataObject, severity: str | None, double_sign: bool) -> None:
            rx_id = data.draw(st.sampled_from(sorted(self.latest)))
            latest = self.latest[rx_id]
            returned = self.model[latest]["status"] == "returned"
            try:
                if double_sign:
                    item = queue.double_sign(rx_id, "D1", "坚持用药")
                else:
                    payload, result = make(rx_id, self.facility, severity)
                    item = queue.resubmit(payload, result, doctor_id="D1")
            except StateError:
                assert not returned
                return
            assert returned
            if double_sign:
                assert item.id == latest
                self.model[latest].update(status="double_signed", claimed_by=None)
            elif item is not None:
                assert item.previous_item_id == latest and item.version > 1
                self.model[item.id] = {
                    "status": "pending",
                    "claimed_by": None,
                    "lease": None,
                    "rx": rx_id,
                    "severity": severity,
                }
                self.latest[rx_id] = item.id
            else:
                self.model[latest]["status"] = "returned"

        @invariant()
        def statuses_match(self) -> None:
            for item_id in list(self.model)[-5:]:
                self._check(item_id)

        def teardown(self) -> None:
            for item_id in self.model:
                self._check(item_id)
                trail = queue.get(item_id).trail
                assert trail[0].action == "submitted"
            # Whatever happened, the trail and decisions still verify as one intact chain.
            verified = queue.verify()
            assert verified.ok, verified.message

    Machine.TestCase.settings = settings(
        max_examples=25, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck)
    )
    Machine.TestCase().runTest()


@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
def test_state_machine(queue: ReviewQueue) -> None:
    run_machine(queue)
