"""The workbench's "oldest waiting" figure: an index on (ready, queued_at), so ``min(queued_at) WHERE
ready = 1`` is an index seek, not a scan of every item (45 ms on 100,000 items on SQLite, each
refresh of each pharmacist's workbench).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_rx_review_item_ready_queued", "rx_review_item", ["ready", "queued_at"])


def downgrade() -> None:
    op.drop_index("ix_rx_review_item_ready_queued", table_name="rx_review_item")
