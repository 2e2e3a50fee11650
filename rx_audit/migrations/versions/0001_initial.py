"""The review queue's schema as it was created on open before migrations: tables, indexes, append-only triggers.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY_TABLES = ("rx_audit_trail", "rx_decision")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rx_prescription",
        sa.Column("prescription_id", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("visit_type", sa.String()),
        sa.Column("facility_id", sa.String()),
        sa.Column("facility_name", sa.String()),
        sa.Column("department", sa.String()),
        sa.Column("prescriber_id", sa.String()),
        sa.Column("prescriber_name", sa.String()),
        sa.Column("patient_id", sa.String()),
        sa.Column("issued_at", TS),
        sa.Column("day", sa.String()),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("previous_id", sa.Integer(), sa.ForeignKey("rx_prescription.id")),
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.UniqueConstraint("prescription_id", "version", name="uq_rx_prescription_version"),
    )
    for column in ("prescription_id", "facility_id", "prescriber_id", "day", "patient_id"):
        op.create_index(f"ix_rx_prescription_{column}", "rx_prescription", [column])

    op.create_table(
        "rx_audit_result",
        sa.Column("prescription_row_id", sa.Integer(), sa.ForeignKey("rx_prescription.id"), nullable=False),
        sa.Column("prescription_id", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("rulebook", sa.String(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("severity", sa.String()),
        sa.Column("audited_at", TS, nullable=False),
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("findings", sa.Text(), nullable=False),
        sa.UniqueConstraint("prescription_row_id", "rulebook", name="uq_rx_audit_result_rulebook"),
    )
    op.create_index("ix_rx_audit_result_prescription_id", "rx_audit_result", ["prescription_id"])
    op.create_index("ix_rx_audit_result_prescription_row_id", "rx_audit_result", ["prescription_row_id"])
    op.create_index("ix_rx_audit_result_rx", "rx_audit_result", ["prescription_id", "rulebook"])

    op.create_table(
        "rx_review_item",
        sa.Column("prescription_id", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("rulebook", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("severity", sa.String()),
        sa.Column("severity_rank", sa.Integer(), nullable=False),
        sa.Column("categories", sa.String(), nullable=False),
        sa.Column("rules", sa.String(), nullable=False),
        sa.Column("facility_id", sa.String()),
        sa.Column("facility_name", sa.String()),
        sa.Column("department", sa.String()),
        sa.Column("prescriber_id", sa.String()),
        sa.Column("patient_id", sa.String()),
        sa.Column("day", sa.String()),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("submitted_at", TS, nullable=False),
        sa.Column("queued_at", TS, nullable=False),
        sa.Column("claimed_by", sa.String()),
        sa.Column("claimed_at", TS),
        sa.Column("lease_expires_at", TS),
        sa.Column("decided_by", sa.String()),
        sa.Column("decided_at", TS),
        sa.Column("reason_code", sa.String()),
        sa.Column("double_sign_reason", sa.String()),
        sa.Column("timeout_action", sa.String()),
        sa.Column("previous_item_id", sa.Integer(), sa.ForeignKey("rx_review_item.id")),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("prescription_row_id", sa.Integer(), sa.ForeignKey("rx_prescription.id"), nullable=False),
        sa.Column("audit_result_id", sa.Integer(), sa.ForeignKey("rx_audit_result.id"), nullable=False),
        sa.Column("ready", sa.Integer(), nullable=False),
        sa.Column("requeue_status", sa.String(), nullable=False),
        sa.UniqueConstraint("prescription_id", "version", "rulebook", name="uq_rx_review_item_key"),
    )
    for column in ("status", "patient_id", "day", "facility_id", "prescriber_id", "prescription_id"):
        op.create_index(f"ix_rx_review_item_{column}", "rx_review_item", [column])
    op.create_index(
        "ix_rx_review_item_next",
        "rx_review_item",
        ["ready", sa.text("priority DESC"), sa.text("severity_rank DESC"), "submitted_at", "id"],
    )
    op.create_index(
        "ix_rx_review_item_status_order",
        "rx_review_item",
        ["status", sa.text("priority DESC"), sa.text("severity_rank DESC"), "submitted_at", "id"],
    )
    op.create_index("ix_rx_review_item_lease", "rx_review_item", ["status", "lease_expires_at"])

    op.create_table(
        "rx_item_finding",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("item_id", sa.Integer(), sa.ForeignKey("rx_review_item.id"), nullable=False),
        sa.Column("rule", sa.String(), nullable=False),
        sa.Column("category", sa.String(), nullable=False),
        sa.Column("severity", sa.String(), nullable=False),
    )
    for column in ("item_id", "category", "rule"):
        op.create_index(f"ix_rx_item_finding_{column}", "rx_item_finding", [column])

    op.create_table(
        "rx_decision",
        sa.Column("item_id", sa.Integer(), sa.ForeignKey("rx_review_item.id"), nullable=False),
        sa.Column("prescription_id", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("reason_code", sa.String()),
        sa.Column("comment", sa.String(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("id", sa.Integer(), primary_key=True),
    )
    op.create_index("ix_rx_decision_prescription_id", "rx_decision", ["prescription_id"])
    op.create_index("ix_rx_decision_item_id", "rx_decision", ["item_id"])

    op.create_table(
        "rx_audit_trail",
        sa.Column("item_id", sa.Integer()),
        sa.Column("prescription_id", sa.String(), nullable=False),
        sa.Column("version", sa.Integer()),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("from_status", sa.String()),
        sa.Column("to_status", sa.String()),
        sa.Column("reason_code", sa.String()),
        sa.Column("reason", sa.String()),
        sa.Column("at", TS, nullable=False),
        sa.Column("id", sa.Integer(), primary_key=True),
    )
    op.create_index("ix_rx_audit_trail_item_id", "rx_audit_trail", ["item_id"])
    op.create_index("ix_rx_audit_trail_prescription_id", "rx_audit_trail", ["prescription_id"])

    op.create_table(
        "rx_replay_error",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("record_id", sa.String()),
        sa.Column("field", sa.String()),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.UniqueConstraint("source", "line", name="uq_rx_replay_error_line"),
    )
    op.create_index("ix_rx_replay_error_source", "rx_replay_error", ["source"])

    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION rx_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION USING MESSAGE = TG_TABLE_NAME || ' is append-only: ' "
            "|| TG_OP || ' refused'; END $$"
        )
    for table in APPEND_ONLY_TABLES:
        if dialect == "sqlite":
            for operation in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {operation} refused'); END"
                )
        elif dialect == "postgresql":
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION rx_append_only()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION rx_append_only()"
            )


def downgrade() -> None:
    for table in (
        "rx_replay_error",
        "rx_audit_trail",
        "rx_decision",
        "rx_item_finding",
        "rx_review_item",
        "rx_audit_result",
        "rx_prescription",
    ):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS rx_append_only()")
