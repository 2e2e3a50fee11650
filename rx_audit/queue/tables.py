"""The queue's tables (SQLModel, all prefixed ``rx_``) and their indexes; the migrations in
``rx_audit/migrations`` create exactly these (a test compares them).

* ``rx_prescription``   the payload as received, one row per (prescription id, version)
* ``rx_audit_result``   one audit of one version by one rulebook (hash, findings)
* ``rx_review_item``    a flagged audit result waiting for / decided by a pharmacist;
                        unique on (prescription id, version, rulebook): submitting twice adds nothing
* ``rx_item_finding``   the rules that fired on an item (for routing filters and statistics)
* ``rx_decision``       pharmacists' and doctors' decisions, coded reason + free text (append-only)
* ``rx_audit_trail``    who did what, when, from which state to which, and why (append-only)
* ``rx_chain_head``     the last link of each hash chain
* ``rx_replay_error``   unreadable records of replayed batches
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, Index, Table, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from rx_audit.queue.common import utcnow

# --- tables and public models, the sqlmodel way: base → table / public ------------------------------


class PrescriptionBase(SQLModel):
    prescription_id: str = Field(index=True)
    version: int = 1
    visit_type: str | None = None
    facility_id: str | None = Field(default=None, index=True)
    facility_name: str | None = None
    department: str | None = None
    prescriber_id: str | None = Field(default=None, index=True)
    prescriber_name: str | None = None
    patient_id: str | None = Field(default=None, index=True)
    issued_at: datetime | None = None
    day: str | None = Field(default=None, index=True, description="issue date (YYYY-MM-DD) as the HIS wrote it")
    received_at: datetime = Field(default_factory=utcnow)
    source: str = "his"
    previous_id: int | None = Field(default=None, foreign_key="rx_prescription.id")


class PrescriptionRow(PrescriptionBase, table=True):
    __tablename__ = "rx_prescription"
    __table_args__ = (UniqueConstraint("prescription_id", "version", name="uq_rx_prescription_version"),)
    id: int | None = Field(default=None, primary_key=True)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    content_hash: str | None = Field(default=None, description="sha256 of the canonical JSON of the payload")
    source_line: int | None = Field(default=None, description="line of the batch file it was replayed from")


class AuditResultBase(SQLModel):
    prescription_row_id: int = Field(foreign_key="rx_prescription.id", index=True)
    prescription_id: str = Field(index=True)
    version: int = 1
    rulebook: str
    flagged: bool = False
    severity: str | None = None
    audited_at: datetime = Field(default_factory=utcnow)


class AuditResultRow(AuditResultBase, table=True):
    __tablename__ = "rx_audit_result"
    __table_args__ = (UniqueConstraint("prescription_row_id", "rulebook", name="uq_rx_audit_result_rulebook"),)
    id: int | None = Field(default=None, primary_key=True)
    findings: str = Field(sa_column=Column(Text, nullable=False))


class ReviewItemBase(SQLModel):
    prescription_id: str = Field(index=True)
    version: int = 1
    rulebook: str
    status: str = Field(default="pending", index=True)
    severity: str | None = None
    severity_rank: int = 0
    categories: str = ","  # ",dose,interaction," — LIKE-filterable on every database
    rules: str = ","
    facility_id: str | None = Field(default=None, index=True)
    facility_name: str | None = None
    department: str | None = None
    prescriber_id: str | None = Field(default=None, index=True)
    patient_id: str | None = Field(default=None, index=True)
    day: str | None = Field(default=None, index=True)
    source: str = "his"
    submitted_at: datetime = Field(default_factory=utcnow)
    queued_at: datetime = Field(default_factory=utcnow)
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    lease_expires_at: datetime | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    reason_code: str | None = None
    double_sign_reason: str | None = None
    timeout_action: str | None = None
    previous_item_id: int | None = Field(default=None, foreign_key="rx_review_item.id")
    priority: int = 0


class ReviewItemRow(ReviewItemBase, table=True):
    __tablename__ = "rx_review_item"
    __table_args__ = (UniqueConstraint("prescription_id", "version", "rulebook", name="uq_rx_review_item_key"),)
    id: int | None = Field(default=None, primary_key=True)
    prescription_row_id: int = Field(foreign_key="rx_prescription.id")
    audit_result_id: int = Field(foreign_key="rx_audit_result.id")
    ready: int = Field(default=1, description="1 while pending/double_signed/escalated: claim_next's index")
    requeue_status: str = "pending"
    trail_id: int | None = Field(default=None, description="the trail row of the last status change (trigger-checked)")


class ItemFindingRow(SQLModel, table=True):
    __tablename__ = "rx_item_finding"
    id: int | None = Field(default=None, primary_key=True)
    item_id: int = Field(foreign_key="rx_review_item.id", index=True)
    rule: str = Field(index=True)
    category: str = Field(index=True)
    severity: str


class DecisionBase(SQLModel):
    item_id: int = Field(foreign_key="rx_review_item.id", index=True)
    prescription_id: str = Field(index=True)
    version: int = 1
    actor: str
    role: str = "pharmacist"  # pharmacist | doctor | system
    action: str  # approve | return | double_sign | timeout_pass
    reason_code: str | None = None
    comment: str = ""
    at: datetime = Field(default_factory=utcnow)


class DecisionRow(DecisionBase, table=True):
    __tablename__ = "rx_decision"
    id: int | None = Field(default=None, primary_key=True)
    chain_seq: int | None = None
    prev_hash: str | None = None
    row_hash: str | None = None


class TrailBase(SQLModel):
    item_id: int | None = Field(default=None, index=True)
    prescription_id: str = Field(index=True)
    version: int | None = None
    actor: str
    action: str
    from_status: str | None = None
    to_status: str | None = None
    reason_code: str | None = None
    reason: str | None = None
    at: datetime = Field(default_factory=utcnow)


class TrailRow(TrailBase, table=True):
    __tablename__ = "rx_audit_trail"
    id: int | None = Field(default=None, primary_key=True)
    chain_seq: int | None = None
    prev_hash: str | None = None
    row_hash: str | None = None


class ChainHeadRow(SQLModel, table=True):
    """The last link of each hash chain; writers lock this row, so appends to a chain are serial."""

    __tablename__ = "rx_chain_head"
    name: str = Field(primary_key=True)
    seq: int = 0
    last_hash: str


class ReplayErrorRow(SQLModel, table=True):
    """A record of a replayed batch that could not be read, by batch and line (re-runs add nothing)."""

    __tablename__ = "rx_replay_error"
    __table_args__ = (UniqueConstraint("source", "line", name="uq_rx_replay_error_line"),)
    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(index=True)
    line: int
    record_id: str | None = None
    field: str | None = None
    error: str = Field(sa_column=Column(Text, nullable=False))
    at: datetime = Field(default_factory=utcnow)


PRESCRIPTIONS: Table = SQLModel.metadata.tables["rx_prescription"]
AUDITS: Table = SQLModel.metadata.tables["rx_audit_result"]
ITEMS: Table = SQLModel.metadata.tables["rx_review_item"]
FINDINGS: Table = SQLModel.metadata.tables["rx_item_finding"]
DECISIONS: Table = SQLModel.metadata.tables["rx_decision"]
TRAIL: Table = SQLModel.metadata.tables["rx_audit_trail"]
HEADS: Table = SQLModel.metadata.tables["rx_chain_head"]
REPLAY_ERRORS: Table = SQLModel.metadata.tables["rx_replay_error"]
TABLES: list[Table] = [PRESCRIPTIONS, AUDITS, ITEMS, FINDINGS, DECISIONS, TRAIL, REPLAY_ERRORS, HEADS]
APPEND_ONLY_TABLES = ("rx_audit_trail", "rx_decision")


def queue_order() -> list[Any]:
    """Escalated first, then the most severe, then the oldest (claim_next, the ready lists)."""
    return [ITEMS.c.priority.desc(), ITEMS.c.severity_rank.desc(), ITEMS.c.submitted_at, ITEMS.c.id]


Index("ix_rx_review_item_next", ITEMS.c.ready, *queue_order())
Index("ix_rx_review_item_status_order", ITEMS.c.status, *queue_order())
Index("ix_rx_review_item_lease", ITEMS.c.status, ITEMS.c.lease_expires_at)
Index("ix_rx_review_item_ready_queued", ITEMS.c.ready, ITEMS.c.queued_at)  # oldest waiting (migration 0004)
Index("ix_rx_audit_result_rx", AUDITS.c.prescription_id, AUDITS.c.rulebook)
Index("ix_rx_prescription_content", PRESCRIPTIONS.c.prescription_id, PRESCRIPTIONS.c.content_hash)
Index("ix_rx_prescription_source_line", PRESCRIPTIONS.c.source, PRESCRIPTIONS.c.source_line)
Index("ux_rx_audit_trail_chain_seq", TRAIL.c.chain_seq, unique=True)
Index("ux_rx_decision_chain_seq", DECISIONS.c.chain_seq, unique=True)
