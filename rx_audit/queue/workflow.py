"""The state machine of a review item: claim, approve, return, double-sign, lease expiry and the
timeout policy. Every move writes its trail row and changes the status in one transaction; a
decision is written with its move (:meth:`Workflow._move_and_decide`).

States::

    pending ──claim──▶ claimed ──approve──▶ approved
       ▲   ◀─lease expires──┘  └──return──▶ returned ──double_sign──▶ double_signed ─claim─▶ claimed …
       │                                       └──resubmit (new version, re-audited)──▶ new item pending
       └── timeout policy: hold (stay pending, logged) | escalate (escalated, first in line) | pass (auto_passed)

``pending``, ``double_signed`` and ``escalated`` items are *ready*: ``claim_next`` takes the ready
item that is escalated first, then the most severe, then the oldest. On PostgreSQL ``claim_next``
uses ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import update
from sqlmodel import Session, select

from rx_audit.errors import NotFoundError, QueueError, ReasonRequiredError, StateError
from rx_audit.queue.chain import ChainedStore
from rx_audit.queue.common import READY_STATUSES, LostRace, TimeoutPolicy, clean_text, scope_list, utc
from rx_audit.queue.database import db_operation
from rx_audit.queue.filters import item_filters
from rx_audit.queue.reasons import Reasons
from rx_audit.queue.schemas import ReviewItem
from rx_audit.queue.tables import DECISIONS, ITEMS, ReviewItemRow, queue_order
from rx_audit.queue.webhooks import WebhookEvents


class Workflow(ChainedStore, WebhookEvents, Reasons):
    """Claims and decisions; ``timeout_policy`` and ``timeout_seconds`` are the queue's."""

    timeout_policy: TimeoutPolicy
    timeout_seconds: float

    # --- moving an item --------------------------------------------------------------------------

    def _move(
        self,
        session: Session,
        row: ReviewItemRow,
        to_status: str,
        *,
        actor: str,
        action: str,
        now: datetime,
        trail_code: str | None = None,
        note: str | None = None,
        expect_claimed_by: str | None = None,
        **values: Any,
    ) -> None:
        """Move one item and log it in the trail, in this transaction: the trail row first (the status
        trigger wants its id), so the row is re-read — locked on PostgreSQL — and must still be in
        the state we read, else another writer won (LostRace, nothing written)."""
        from_status = row.status
        current_stmt = select(ITEMS.c.status, ITEMS.c.claimed_by).where(ITEMS.c.id == row.id)
        if self.is_postgres:
            current_stmt = current_stmt.with_for_update()
        current = session.execute(current_stmt).one_or_none()
        if current is None or current[0] != from_status:
            raise LostRace
        if expect_claimed_by is not None and current[1] != expect_claimed_by:
            raise LostRace
        trail_id = self._trail(
            session,
            item_id=row.id,
            prescription_id=row.prescription_id,
            version=row.version,
            actor=actor,
            action=action,
            from_status=from_status,
            to_status=to_status,
            reason_code=trail_code,
            reason=note,
            at=now,
        )
        values = {"status": to_status, "ready": int(to_status in READY_STATUSES), "trail_id": trail_id, **values}
        if to_status in READY_STATUSES:
            values.setdefault("requeue_status", to_status)
        result = session.connection().execute(
            update(ITEMS).where(ITEMS.c.id == row.id, ITEMS.c.status == from_status).values(**clean_text(values))
        )
        if result.rowcount != 1:  # pragma: no cover - the row is ours (lock / IMMEDIATE)
            raise LostRace
        if row in session:
            session.expunge(row)  # the UPDATE above is the write; the ORM must not flush it again
        for key, value in values.items():
            setattr(row, key, value)

    def _move_and_decide(
        self,
        session: Session,
        row: ReviewItemRow,
        to_status: str,
        *,
        actor: str,
        role: str,
        action: str,
        now: datetime,
        note: str,
        reason_code: str | None,
        comment: str,
        trail_code: str | None = None,
        expect_claimed_by: str | None = None,
        **values: Any,
    ) -> None:
        """A decision: move the item (trail row), append the decision row and the webhook event, in this transaction."""
        self._move(
            session,
            row,
            to_status,
            actor=actor,
            action=action,
            now=now,
            trail_code=trail_code,
            note=note,
            expect_claimed_by=expect_claimed_by,
            reason_code=reason_code,  # the item's too
            **values,
        )
        self._append(
            session,
            DECISIONS,
            [
                {
                    "item_id": row.id,
                    "prescription_id": row.prescription_id,
                    "version": row.version,
                    "actor": actor,
                    "role": role,
                    "action": action,
                    "reason_code": reason_code,
                    "comment": comment,
                    "at": now,
                }
            ],
        )
        self._webhook_event(session, row, now)  # the facility's webhook event, in this transaction

    def _claim_row(
        self,
        session: Session,
        row: ReviewItemRow,
        pharmacist_id: str,
        action: str,
        moment: datetime,
        lease_seconds: float,
    ) -> ReviewItem:
        self._move(
            session,
            row,
            "claimed",
            actor=pharmacist_id,
            action=action,
            now=moment,
            note=f"lease {int(lease_seconds)}s",
            claimed_by=pharmacist_id,
            claimed_at=moment,
            lease_expires_at=moment + timedelta(seconds=lease_seconds),
        )
        return self._public(row)

    # --- claiming --------------------------------------------------------------------------------

    @db_operation
    def claim_next(
        self,
        pharmacist_id: str,
        *,
        facilities: Sequence[str] | None = None,
        severity: str | Sequence[str] | None = None,
        category: str | Sequence[str] | None = None,
        department: str | Sequence[str] | None = None,
        lease_seconds: float = 600,
        now: datetime | None = None,
        scope: Sequence[str] | None = None,
        exclude: Sequence[int] | None = None,
    ) -> ReviewItem | None:
        """Claim the ready item that is escalated first, most severe, then oldest; None when none is left.

        ``facilities`` limits the claim to the facilities the pharmacist serves (county hub routing),
        within ``scope`` (the facilities the caller may see; None: all). ``exclude``: item ids not
        to take (the ones this pharmacist skipped; others may still take them).
        Leases that have expired are released first (logged), so a crashed session never blocks.
        """
        pharmacist_id = clean_text(pharmacist_id)  # as stored: NUL escaped
        conditions = [
            ITEMS.c.ready == 1,
            *item_filters(
                facility=facilities, severity=severity, category=category, department=department, scope=scope
            ),
        ]
        if exclude:
            conditions.append(ITEMS.c.id.not_in([int(i) for i in exclude]))
        for _attempt in range(50):
            moment = utc(now)
            try:
                with self._write() as session:
                    self._release_expired(session, moment, limit=500)
                    stmt = select(ReviewItemRow).where(*conditions).order_by(*queue_order()).limit(1)
                    if self.is_postgres:
                        stmt = stmt.with_for_update(skip_locked=True)
                    row = session.exec(stmt).first()
                    if row is None:
                        return None
                    return self._claim_row(session, row, pharmacist_id, "claim", moment, lease_seconds)
            except LostRace:
                continue
        raise QueueError("claim_next: too much contention, try again")

    @db_operation
    def claim(
        self,
        item_id: int,
        pharmacist_id: str,
        lease_seconds: float = 600,
        *,
        now: datetime | None = None,
        scope: Sequence[str] | None = None,
    ) -> ReviewItem:
        """Claim one item: ready, or claimed with an expired lease, or yours (renews the lease)."""
        pharmacist_id = clean_text(pharmacist_id)
        moment = utc(now)
        try:
            with self._write() as session:
                row = self._item_row(session, item_id, scope)
                action = _claim_action(row, pharmacist_id, moment)
                return self._claim_row(session, row, pharmacist_id, action, moment, lease_seconds)
        except LostRace:
            raise StateError(f"审方任务 {item_id} 刚被他人更改 (changed concurrently), retry") from None

    @db_operation
    def renew_lease(
        self,
        item_id: int,
        pharmacist_id: str,
        lease_seconds: float = 600,
        *,
        now: datetime | None = None,
        scope: Sequence[str] | None = None,
    ) -> ReviewItem:
        """Extend the lease of an item ``pharmacist_id`` holds (the workbench calls this while the item
        is open). No trail row: the status does not change, and the claim's trail row already records
        the lease; a lease that runs out is logged when it is released. StateError when the item is
        not (or no longer) this pharmacist's."""
        pharmacist_id = clean_text(pharmacist_id)
        moment = utc(now)
        with self._write() as session:
            row = self._item_row(session, item_id, scope)
            if row.status != "claimed" or row.claimed_by != pharmacist_id:
                raise StateError(f"审方任务 {item_id} 已不在 {pharmacist_id} 的审核中 (no longer claimed by you)")
            expires = moment + timedelta(seconds=lease_seconds)
            session.connection().execute(
                update(ITEMS)
                .where(ITEMS.c.id == row.id, ITEMS.c.status == "claimed", ITEMS.c.claimed_by == pharmacist_id)
                .values(lease_expires_at=expires)
            )
            session.expunge(row)
            row.lease_expires_at = expires
            return self._public(row)

    @db_operation
    def release(
        self,
        item_id: int,
        pharmacist_id: str,
        *,
        action: Literal["give_back", "skip"] = "give_back",
        note: str = "",
        now: datetime | None = None,
        scope: Sequence[str] | None = None,
    ) -> ReviewItem:
        """Put an item ``pharmacist_id`` holds back in line undecided (交回 ``give_back``, or 跳过
        ``skip`` — the workbench then does not offer it to that pharmacist again), logged in the
        trail with ``action`` and ``note``. It returns to the ready status it came from and keeps its
        place (``queued_at`` unchanged: giving an item back must not send it to the end of the line)."""
        if action not in ("give_back", "skip"):
            raise QueueError(f"release action must be give_back or skip, not {action!r}")
        pharmacist_id = clean_text(pharmacist_id)
        moment = utc(now)
        words = {"give_back": "交回 given back", "skip": "跳过 skipped"}[action]
        try:
            with self._write() as session:
                row = self._item_row(session, item_id, scope)
                if row.status != "claimed" or row.claimed_by != pharmacist_id:
                    raise StateError(f"审方任务 {item_id} 不在 {pharmacist_id} 的审核中，不能交回 (not claimed by you)")
                self._move(
                    session,
                    row,
                    row.requeue_status or "pending",
                    actor=pharmacist_id,
                    action=action,
                    now=moment,
                    note=words + (f"：{clean_text(note)}" if note and note.strip() else ""),
                    expect_claimed_by=pharmacist_id,
                    claimed_by=None,
                    claimed_at=None,
                    lease_expires_at=None,
                )
                return self._public(row)
        except LostRace:
            raise StateError(f"审方任务 {item_id} 刚被他人更改 (changed concurrently)") from None

    @db_operation
    def release_expired(self, now: datetime | None = None) -> int:
        """Put every claimed item whose lease has expired back in line (logged); the number released."""
        with self._write() as session:
            return self._release_expired(session, utc(now), limit=None)

    def _release_expired(self, session: Session, now: datetime, *, limit: int | None) -> int:
        stmt = select(ReviewItemRow).where(ITEMS.c.status == "claimed", ITEMS.c.lease_expires_at < now)
        if limit:
            stmt = stmt.limit(limit)
        if self.is_postgres:
            stmt = stmt.with_for_update(skip_locked=True)
        released = 0
        for row in session.exec(stmt).all():
            try:
                self._move(
                    session,
                    row,
                    row.requeue_status or "pending",
                    actor="system",
                    action="lease_expired",
                    now=now,
                    note=f"{row.claimed_by} 的领取已过期 (lease expired at {row.lease_expires_at:%Y-%m-%d %H:%M:%S})",
                    claimed_by=None,
                    claimed_at=None,
                    lease_expires_at=None,
                    queued_at=now,
                )
                released += 1
            except LostRace:
                continue
        return released

    # --- deciding ------------------------------------------------------------------------------

    def _decide(
        self,
        item_id: int,
        pharmacist_id: str,
        reason_code: str,
        comment: str,
        *,
        kind: str,
        to_status: str,
        now: datetime | None,
        scope: Sequence[str] | None,
    ) -> ReviewItem:
        # An empty code on a critical item is a ReasonRequiredError, not an unknown code: look it up later.
        reason = self._reason(kind, reason_code) if reason_code and reason_code.strip() else None
        comment = clean_text(comment or "")
        pharmacist_id = clean_text(pharmacist_id)
        moment = utc(now)
        try:
            with self._write() as session:
                row = self._item_row(session, item_id, scope)
                if row.status != "claimed" or row.claimed_by != pharmacist_id:
                    raise StateError(
                        f"审方任务 {item_id} 状态为 {row.status}（领取人 {row.claimed_by}），{pharmacist_id} 不能决定 "
                        "(claim the item first)"
                    )
                if kind == "approve" and row.severity == "critical" and not (reason_code.strip() and comment.strip()):
                    raise ReasonRequiredError(
                        f"审方任务 {item_id} 含拦截级(critical)问题：审核通过必须选择原因代码并填写说明 "
                        "(passing a critical finding needs a reason code and a comment)"
                    )
                if reason is None:
                    reason = self._reason(kind, reason_code)
                self._move_and_decide(
                    session,
                    row,
                    to_status,
                    actor=pharmacist_id,
                    role="pharmacist",
                    action=kind,
                    now=moment,
                    note=f"{reason.label}{('：' + comment) if comment else ''}",
                    reason_code=reason_code,
                    comment=comment,
                    trail_code=reason_code,
                    expect_claimed_by=pharmacist_id,
                    decided_by=pharmacist_id,
                    decided_at=moment,
                    lease_expires_at=None,
                )
                return self._public(row)
        except LostRace:
            raise StateError(f"审方任务 {item_id} 刚被他人更改 (changed concurrently)") from None

    @db_operation
    def approve(
        self,
        item_id: int,
        pharmacist_id: str,
        reason_code: str,
        comment: str = "",
        *,
        now: datetime | None = None,
        scope: Sequence[str] | None = None,
    ) -> ReviewItem:
        """Pass a claimed item (审核通过) with a coded reason (``reasons("approve")``) and free text.

        An item with a ``critical`` finding needs both a reason code and a non-empty comment, else
        :class:`ReasonRequiredError`; both are kept in the decision and the trail.
        """
        return self._decide(
            item_id, pharmacist_id, reason_code, comment, kind="approve", to_status="approved", now=now, scope=scope
        )

    @db_operation
    def return_to_doctor(
        self,
        item_id: int,
        pharmacist_id: str,
        reason_code: str,
        comment: str = "",
        *,
        now: datetime | None = None,
        scope: Sequence[str] | None = None,
    ) -> ReviewItem:
        """Return a claimed item to the doctor (退回医生) with a coded reason (``reasons("return")``)."""
        return self._decide(
            item_id, pharmacist_id, reason_code, comment, kind="return", to_status="returned", now=now, scope=scope
        )

    @db_operation
    def double_sign(
        self,
        prescription_id: str,
        doctor_id: str,
        reason: str,
        *,
        now: datetime | None = None,
        scope: Sequence[str] | None = None,
    ) -> ReviewItem:
        """The doctor insists (双签) with a reason: the returned item goes back in line as ``double_signed``."""
        if not reason or not reason.strip():
            raise QueueError("双签必须注明理由 (a double signature needs a reason)")
        reason, doctor_id = clean_text(reason), clean_text(doctor_id)
        moment = utc(now)
        try:
            with self._write() as session:
                stmt = select(ReviewItemRow).where(ITEMS.c.prescription_id == prescription_id)
                if scope is not None:
                    stmt = stmt.where(ITEMS.c.facility_id.in_(scope_list(scope)))
                row = session.exec(stmt.order_by(ITEMS.c.version.desc(), ITEMS.c.id.desc())).first()
                if row is None:
                    raise NotFoundError(f"处方 {prescription_id} 没有审方记录 (no review item)")
                if row.status != "returned":
                    raise StateError(f"处方 {prescription_id} 当前状态为 {row.status}，只有退回的处方可以双签")
                self._move_and_decide(
                    session,
                    row,
                    "double_signed",
                    actor=doctor_id,
                    role="doctor",
                    action="double_sign",
                    now=moment,
                    note=reason,
                    reason_code=None,
                    comment=reason,
                    double_sign_reason=reason,
                    queued_at=moment,
                    claimed_by=None,
                    claimed_at=None,
                    lease_expires_at=None,
                    decided_by=None,
                    decided_at=None,
                )
                return self._public(row)
        except LostRace:
            raise StateError(f"处方 {prescription_id} 刚被他人更改 (changed concurrently)") from None

    # --- timeouts --------------------------------------------------------------------------------

    @db_operation
    def apply_timeout_policy(self, now: datetime | None = None) -> int:
        """Act on ready items nobody reviewed within ``timeout_seconds``; each action is logged with its reason.

        ``hold`` (default; 医疗机构处方审核规范: no prescription is dispensed or paid before review)
        keeps the item pending and logs it once; ``escalate`` moves it to ``escalated`` (claimed
        first); ``pass`` auto-passes it (``auto_passed``, a system decision). Returns the number acted on.
        """
        moment = utc(now)
        cutoff = moment - timedelta(seconds=self.timeout_seconds)
        acted = 0
        with self._write() as session:
            stmt = select(ReviewItemRow).where(
                ITEMS.c.ready == 1, ITEMS.c.queued_at < cutoff, ITEMS.c.timeout_action.is_(None)
            )
            if self.is_postgres:
                stmt = stmt.with_for_update(skip_locked=True)
            for row in session.exec(stmt).all():
                try:
                    self._time_out(session, row, moment)
                    acted += 1
                except LostRace:
                    continue
        return acted

    def _time_out(self, session: Session, row: ReviewItemRow, moment: datetime) -> None:
        minutes = self.timeout_seconds / 60
        base = f"{minutes:g} 分钟内无人审核 (not reviewed within {minutes:g} min)"
        if self.timeout_policy == "hold":
            self._move(
                session,
                row,
                row.status,
                actor="system",
                action="timeout_hold",
                now=moment,
                note=base + "：保持拦截，未经审核不得收费调配 (held)",
                timeout_action="hold",
            )
        elif self.timeout_policy == "escalate":
            self._move(
                session,
                row,
                "escalated",
                actor="system",
                action="timeout_escalate",
                now=moment,
                note=base + "：升级处理 (escalated)",
                timeout_action="escalate",
                priority=1,
            )
            self._webhook_event(session, row, moment)  # escalation is not a decision row, but an event
        else:
            self._move_and_decide(
                session,
                row,
                "auto_passed",
                actor="system",
                role="system",
                action="timeout_pass",
                now=moment,
                note=base + "：按超时策略自动通过 (auto-passed by policy)",
                reason_code="TIMEOUT",
                comment=base,
                timeout_action="pass",
                decided_by="system",
                decided_at=moment,
            )


def _claim_action(row: ReviewItemRow, pharmacist_id: str, moment: datetime) -> str:
    """How ``pharmacist_id`` may claim ``row`` now (claim / renew / claim_expired), or StateError."""
    if row.status in READY_STATUSES:
        return "claim"
    if row.status != "claimed":
        raise StateError(f"审方任务 {row.id} 状态为 {row.status}，不能领取 (cannot be claimed)")
    live = row.lease_expires_at is not None and utc(row.lease_expires_at) > moment
    if live and row.claimed_by != pharmacist_id:
        raise StateError(f"审方任务 {row.id} 已被 {row.claimed_by} 领取 (claimed by someone else)")
    return "renew" if row.claimed_by == pharmacist_id else "claim_expired"
