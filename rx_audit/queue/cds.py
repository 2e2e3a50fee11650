"""CDS Hooks cards the service answered and the EHR's feedback on them, in the queue's database.

Feedback comes back as separate requests, and a load balancer or another worker may take it: the
card index therefore lives beside the prescriptions, not in one worker's memory (where feedback
reaching any other worker was "unknown-card" and an override was never recorded as 双签).

* ``rx_cds_card``      one row per card: its prescription and version, facility, the EHR user, rules
* ``rx_cds_feedback``  one row per feedback entry: accepted / overridden (reason), what it recorded
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Table, Text, insert, select
from sqlmodel import Field, SQLModel

from rx_audit.queue.common import clean_text, utcnow
from rx_audit.queue.database import db_operation
from rx_audit.queue.store import QueueStore


class CdsCardRow(SQLModel, table=True):
    __tablename__ = "rx_cds_card"
    card: str = Field(primary_key=True)
    prescription_id: str = Field(index=True)
    version: int
    facility_id: str
    user_id: str | None = None
    rules: str = Field(sa_column=Column(Text, nullable=False))  # JSON list of rule ids
    created_at: datetime = Field(default_factory=utcnow)


class CdsFeedbackRow(SQLModel, table=True):
    __tablename__ = "rx_cds_feedback"
    id: int | None = Field(default=None, primary_key=True)
    card: str = Field(index=True)
    key_id: str
    prescription_id: str = Field(index=True)
    facility_id: str
    outcome: str  # accepted | overridden
    reason: str | None = None
    recorded: str  # noted | double_signed
    at: datetime = Field(default_factory=utcnow)


CARDS: Table = SQLModel.metadata.tables["rx_cds_card"]
FEEDBACK: Table = SQLModel.metadata.tables["rx_cds_feedback"]


class CdsCards(QueueStore):
    """The cards and feedback of the CDS Hooks service (:mod:`rx_audit.server.routes_cds`)."""

    @db_operation
    def remember_cards(self, cards: Mapping[str, Mapping[str, Any]]) -> None:
        """Card uuid → ``prescription``, ``version``, ``facility``, ``user``, ``rules`` (one transaction)."""
        if not cards:
            return
        now = utcnow()
        rows = [
            clean_text({
                "card": card, "prescription_id": entry["prescription"], "version": int(entry["version"]),
                "facility_id": entry["facility"], "user_id": entry.get("user"),
                "rules": json.dumps(list(entry.get("rules") or []), ensure_ascii=False), "created_at": now,
            })
            for card, entry in cards.items()
        ]  # fmt: skip
        with self._write() as session:
            session.execute(insert(CARDS), rows)

    @db_operation
    def card(self, card: str, scope: Sequence[str]) -> dict[str, Any] | None:
        """What a card was about, when it is known and of one of ``scope``'s facilities (else None:
        another facility's card is as unknown as a made-up one)."""
        with self._read() as session:
            row = session.execute(select(CARDS).where(CARDS.c.card == clean_text(card))).mappings().first()
        if row is None or row["facility_id"] not in set(scope):
            return None
        return {"prescription": row["prescription_id"], "version": row["version"], "facility": row["facility_id"],
                "user": row["user_id"], "rules": json.loads(row["rules"])}  # fmt: skip

    @db_operation
    def note_feedback(self, record: Mapping[str, Any]) -> None:
        """One feedback entry: ``card``, ``key_id``, ``prescription``, ``facility``, ``outcome``,
        ``reason``, ``recorded``."""
        with self._write() as session:
            session.execute(insert(FEEDBACK), [clean_text({
                "card": record["card"], "key_id": record["key_id"], "prescription_id": record["prescription"],
                "facility_id": record["facility"], "outcome": record["outcome"], "reason": record.get("reason"),
                "recorded": record["recorded"], "at": utcnow(),
            })])  # fmt: skip

    @db_operation
    def cds_feedback(self, prescription_id: str, scope: Sequence[str]) -> list[dict[str, Any]]:
        """The feedback recorded on a prescription's cards, oldest first (within ``scope``)."""
        with self._read() as session:
            rows = session.execute(
                select(FEEDBACK)
                .where(FEEDBACK.c.prescription_id == clean_text(prescription_id),
                       FEEDBACK.c.facility_id.in_(list(scope)))
                .order_by(FEEDBACK.c.id)
            ).mappings().all()  # fmt: skip
        return [{key: row[key] for key in ("card", "key_id", "outcome", "reason", "recorded", "at")} for row in rows]
