"""Webhooks: a facility registers a callback URL (``rx_webhook``); every decision on its prescriptions
(approve, return, double-sign, auto-pass, escalate) adds one ``rx_webhook_event`` row in the SAME
transaction as the decision, with the body the HIS would read from ``GET /v1/prescriptions/{id}`` at
that moment plus ``event_id`` and ``event_at``. The service's deliverer
(:mod:`rx_audit.server.webhooks`) claims due events and POSTs them: at least once, retried with
exponential back-off, a bounded number of attempts; the state of each event is kept here.

The secret is stored as given (``rx_webhook.secret``): HMAC signing needs it, a hash would not do.
It is never logged, never returned by an endpoint; protect the database as you protect the keys.

* ``rx_webhook``        one callback URL and secret per facility
* ``rx_webhook_event``  one event per decision: body, status pending → delivered | failed, attempts,
                        next attempt, last error
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, Table, Text, insert, select, update
from sqlmodel import Field, Session, SQLModel

from rx_audit.queue.common import utc, utcnow
from rx_audit.queue.store import QueueStore

EVENT_STATUSES = frozenset({"approved", "returned", "double_signed", "auto_passed", "escalated"})
RELEASED = frozenset({"not_flagged", "approved", "auto_passed"})  # as rx_audit.server.state
DELIVERY_STATUSES = ("pending", "delivered", "failed")


class WebhookRow(SQLModel, table=True):
    """A facility's callback: URL and the HMAC secret (stored as given: signing needs it)."""

    __tablename__ = "rx_webhook"
    facility: str = Field(primary_key=True)
    url: str = Field(sa_column=Column(Text, nullable=False))
    secret: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class WebhookEventRow(SQLModel, table=True):
    """One decision to deliver; ``attempts`` counts POSTs tried, ``next_attempt_at`` is when a
    deliverer may take it (also the lease of the deliverer that holds it)."""

    __tablename__ = "rx_webhook_event"
    event_id: str = Field(primary_key=True)
    facility: str = Field(index=True)
    prescription_id: str = Field(index=True)
    item_id: int | None = None
    event: str  # the status the decision moved to
    body: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="pending", index=True)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, index=True)
    last_error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


WEBHOOKS: Table = SQLModel.metadata.tables["rx_webhook"]
EVENTS: Table = SQLModel.metadata.tables["rx_webhook_event"]


def _iso(value: datetime | None) -> str | None:
    return utc(value).isoformat() if value is not None else None


class WebhookEvents(QueueStore):
    """The webhook part of the queue: registration, the event written with each decision, delivery state."""

    # --- written with a decision (Workflow calls this inside its transaction) -----------------------

    def _webhook_event(self, session: Session, row: Any, now: datetime) -> None:
        """Add the event of the decision just recorded on ``row`` when its facility has a webhook."""
        if row.status not in EVENT_STATUSES or not row.facility_id:
            return
        if session.execute(select(WEBHOOKS.c.facility).where(WEBHOOKS.c.facility == row.facility_id)).first() is None:
            return
        from rx_audit.queue.tables import DECISIONS

        last = (
            session.execute(
                select(DECISIONS).where(DECISIONS.c.item_id == row.id).order_by(DECISIONS.c.id.desc()).limit(1)
            )
            .mappings()
            .first()
        )
        decision = None
        if last is not None:
            labels = {r.code: r.label for kind in ("approve", "return") for r in self.reasons(kind)}  # type: ignore[attr-defined]
            decision = {
                "action": last["action"],
                "by": last["actor"],
                "role": last["role"],
                "reason_code": last["reason_code"],
                "reason": labels.get(last["reason_code"]) if last["reason_code"] else None,
                "note": last["comment"] or None,
                "at": _iso(last["at"]),
            }
        event_id = "evt_" + uuid.uuid4().hex
        body = {
            "id": row.prescription_id,
            "version": row.version,
            "facility": row.facility_id,
            "flagged": True,
            "severity": row.severity,
            "rulebook": row.rulebook,
            "status": row.status,
            "item": str(row.id),
            "decision": decision,
            "release": row.status in RELEASED,
            "event_id": event_id,
            "event_at": utc(now).isoformat(),
        }
        session.execute(
            insert(EVENTS).values(
                event_id=event_id,
                facility=row.facility_id,
                prescription_id=row.prescription_id,
                item_id=row.id,
                event=row.status,
                body=json.dumps(body, ensure_ascii=False, separators=(",", ":")),
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
        )

    # --- registration -------------------------------------------------------------------------------

    def set_webhook(self, facility: str, url: str, secret: str, *, now: datetime | None = None) -> None:
        """Register (or replace) ``facility``'s callback URL and secret."""
        moment = utc(now)
        with self._write() as session:
            found = session.execute(select(WEBHOOKS.c.facility).where(WEBHOOKS.c.facility == facility)).first()
            if found is None:
                session.execute(
                    insert(WEBHOOKS).values(
                        facility=facility, url=url, secret=secret, created_at=moment, updated_at=moment
                    )
                )
            else:
                session.execute(
                    update(WEBHOOKS)
                    .where(WEBHOOKS.c.facility == facility)
                    .values(url=url, secret=secret, updated_at=moment)
                )

    def delete_webhook(self, facility: str, *, now: datetime | None = None) -> bool:
        """Unregister ``facility``'s callback; False when none was registered. The row stays with an
        empty URL and secret (the application role may not DELETE; the deliverer and the listing treat
        it as absent), and so do the events (their history): pending ones fail with "no webhook
        registered" until a URL is registered again."""
        moment = utc(now)
        with self._write() as session:
            found = session.execute(
                select(WEBHOOKS.c.facility).where(WEBHOOKS.c.facility == facility, WEBHOOKS.c.url != "")
            ).first()
            if found is not None:
                session.execute(
                    update(WEBHOOKS).where(WEBHOOKS.c.facility == facility).values(url="", secret="", updated_at=moment)
                )
            return found is not None

    def resend_webhook_event(self, event_id: str, scope: Sequence[str], *, now: datetime | None = None) -> str | None:
        """Send a ``failed`` (or ``delivered``) event of ``scope``'s facilities again: pending now, with
        a fresh count of attempts. Returns the status it had (None: no such event in scope); a pending
        event is left as it is."""
        moment = utc(now)
        with self._write() as session:
            found = session.execute(
                select(EVENTS.c.status).where(EVENTS.c.event_id == event_id, EVENTS.c.facility.in_(list(scope)))
            ).first()
            if found is None:
                return None
            if found.status != "pending":
                session.execute(
                    update(EVENTS)
                    .where(EVENTS.c.event_id == event_id)
                    .values(status="pending", attempts=0, next_attempt_at=moment, updated_at=moment)
                )
            return str(found.status)

    def webhooks(self, scope: Sequence[str]) -> list[dict[str, Any]]:
        """The registrations of ``scope``'s facilities: facility, url, times (never the secret)."""
        with self._read() as session:
            rows = (
                session.execute(
                    select(WEBHOOKS.c.facility, WEBHOOKS.c.url, WEBHOOKS.c.created_at, WEBHOOKS.c.updated_at)
                    .where(WEBHOOKS.c.facility.in_(list(scope)), WEBHOOKS.c.url != "")  # "": unregistered
                    .order_by(WEBHOOKS.c.facility)
                )
                .mappings()
                .all()
            )
        return [{**row, "created_at": _iso(row["created_at"]), "updated_at": _iso(row["updated_at"])} for row in rows]

    # --- delivery state -----------------------------------------------------------------------------

    def webhook_events(
        self,
        scope: Sequence[str] | None,
        *,
        status: str | None = None,
        prescription_id: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Events of ``scope``'s facilities (None: all), newest first, with their delivery state."""
        stmt = select(EVENTS)
        if scope is not None:
            stmt = stmt.where(EVENTS.c.facility.in_(list(scope)))
        if status is not None:
            stmt = stmt.where(EVENTS.c.status == status)
        if prescription_id is not None:
            stmt = stmt.where(EVENTS.c.prescription_id == prescription_id)
        stmt = stmt.order_by(EVENTS.c.created_at.desc(), EVENTS.c.event_id).limit(limit)
        with self._read() as session:
            rows = session.execute(stmt).mappings().all()
        return [
            {
                "event_id": row["event_id"],
                "facility": row["facility"],
                "prescription_id": row["prescription_id"],
                "event": row["event"],
                "status": row["status"],
                "attempts": row["attempts"],
                "next_attempt_at": _iso(row["next_attempt_at"]) if row["status"] == "pending" else None,
                "last_error": row["last_error"],
                "created_at": _iso(row["created_at"]),
                "updated_at": _iso(row["updated_at"]),
            }
            for row in rows
        ]

    def claim_webhook_events(
        self, *, now: datetime | None = None, limit: int = 20, lease_seconds: float = 60.0
    ) -> list[dict[str, Any]]:
        """Take due events for delivery: each one's ``attempts`` goes up and it is leased until
        ``now + lease_seconds`` (a deliverer that dies mid-send lets another retry after it: at least
        once). ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the write lock on SQLite: two deliverers
        never take the same event at once."""
        moment = utc(now)
        with self._write() as session:
            stmt = (
                select(EVENTS.c.event_id, EVENTS.c.body, EVENTS.c.attempts, EVENTS.c.facility)
                .where(EVENTS.c.status == "pending", EVENTS.c.next_attempt_at <= moment)
                .order_by(EVENTS.c.next_attempt_at, EVENTS.c.event_id)
                .limit(limit)
            )
            if self.is_postgres:
                stmt = stmt.with_for_update(skip_locked=True)
            due = session.execute(stmt).mappings().all()
            if not due:
                return []
            targets = {
                row["facility"]: (row["url"], row["secret"])
                for row in session.execute(
                    select(WEBHOOKS.c.facility, WEBHOOKS.c.url, WEBHOOKS.c.secret).where(
                        WEBHOOKS.c.facility.in_({row["facility"] for row in due})
                    )
                ).mappings()
            }
            claimed = []
            for row in due:
                attempts = row["attempts"] + 1
                session.execute(
                    update(EVENTS)
                    .where(EVENTS.c.event_id == row["event_id"])
                    .values(
                        attempts=attempts, next_attempt_at=moment + timedelta(seconds=lease_seconds), updated_at=moment
                    )
                )
                url, secret = targets.get(row["facility"], (None, None))
                claimed.append({"event_id": row["event_id"], "body": row["body"], "attempts": attempts,
                                "url": url, "secret": secret})  # fmt: skip
            return claimed

    def finish_webhook_event(
        self,
        event_id: str,
        *,
        delivered: bool,
        error: str | None = None,
        retry_at: datetime | None = None,
        now: datetime | None = None,
    ) -> None:
        """Record one attempt's outcome: delivered; or failed again — pending until ``retry_at``, or
        ``failed`` for good when ``retry_at`` is None (attempts used up)."""
        moment = utc(now)
        if delivered:
            values: dict[str, Any] = {"status": "delivered", "last_error": None}
        elif retry_at is None:
            values = {"status": "failed", "last_error": (error or "")[:2000]}
        else:
            values = {"next_attempt_at": utc(retry_at), "last_error": (error or "")[:2000]}
        with self._write() as session:
            session.execute(
                update(EVENTS)
                .where(EVENTS.c.event_id == event_id, EVENTS.c.status == "pending")
                .values(updated_at=moment, **values)
            )
