"""CDS Hooks cards and feedback in the database: ``rx_cds_card`` (what each answered card was about)
and ``rx_cds_feedback`` (the EHR's accepted / overridden, and what it recorded), so feedback that
reaches another worker or instance than the one that issued the card is understood. The
application role gets SELECT, INSERT on both (``migrate(grant_to=…)``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rx_cds_card",
        sa.Column("card", sa.String(), primary_key=True),
        sa.Column("prescription_id", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("facility_id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String()),
        sa.Column("rules", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_rx_cds_card_prescription_id", "rx_cds_card", ["prescription_id"])
    op.create_table(
        "rx_cds_feedback",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("card", sa.String(), nullable=False),
        sa.Column("key_id", sa.String(), nullable=False),
        sa.Column("prescription_id", sa.String(), nullable=False),
        sa.Column("facility_id", sa.String(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("reason", sa.String()),
        sa.Column("recorded", sa.String(), nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_rx_cds_feedback_card", "rx_cds_feedback", ["card"])
    op.create_index("ix_rx_cds_feedback_prescription_id", "rx_cds_feedback", ["prescription_id"])


def downgrade() -> None:
    op.drop_index("ix_rx_cds_feedback_prescription_id", "rx_cds_feedback")
    op.drop_index("ix_rx_cds_feedback_card", "rx_cds_feedback")
    op.drop_table("rx_cds_feedback")
    op.drop_index("ix_rx_cds_card_prescription_id", "rx_cds_card")
    op.drop_table("rx_cds_card")
