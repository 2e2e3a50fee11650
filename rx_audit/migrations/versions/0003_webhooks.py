"""Webhooks: ``rx_webhook`` (one callback URL and HMAC secret per facility) and ``rx_webhook_event``
(one event per decision, its body and delivery state). The secret is stored as given — signing needs
it — and never logged or returned. The application role gets SELECT, INSERT, UPDATE on both
(``migrate(grant_to=…)``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rx_webhook",
        sa.Column("facility", sa.String(), primary_key=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "rx_webhook_event",
        sa.Column("event_id", sa.String(), primary_key=True),
        sa.Column("facility", sa.String(), nullable=False),
        sa.Column("prescription_id", sa.String(), nullable=False),
        sa.Column("item_id", sa.Integer()),
        sa.Column("event", sa.String(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("last_error", sa.String()),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    for column in ("facility", "prescription_id", "status", "next_attempt_at"):
        op.create_index(f"ix_rx_webhook_event_{column}", "rx_webhook_event", [column])


def downgrade() -> None:
    for column in ("facility", "prescription_id", "status", "next_attempt_at"):
        op.drop_index(f"ix_rx_webhook_event_{column}", "rx_webhook_event")
    op.drop_table("rx_webhook_event")
    op.drop_table("rx_webhook")
