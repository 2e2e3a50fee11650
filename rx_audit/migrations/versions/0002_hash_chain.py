"""Tamper evidence and versions: hash chain over trail and decisions, status changes tied to trail rows.

* ``rx_audit_trail`` and ``rx_decision`` get ``chain_seq``, ``prev_hash``, ``row_hash``: each row's
  hash covers its content and the previous row's hash (``rx_audit.queue.chain_hash``); existing
  rows are chained here, in id order. ``rx_chain_head`` holds each chain's last seq and hash:
  writers lock that row, so concurrent writers serialise on it.
* SQLite: a BEFORE INSERT trigger refuses a row whose id or chain_seq exists (``INSERT OR REPLACE``
  would otherwise delete the old row without firing the DELETE trigger).
* ``rx_review_item.trail_id``: a status change must point at a newer trail row of that item that
  records exactly that change (trigger on both databases), so no status changes without a trail row.
* ``rx_prescription.content_hash`` / ``source_line``: the same id with the same content is a
  repeat, with other content a new version; the line lets a resumed replay tell its own records.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CHAINED = ("rx_audit_trail", "rx_decision")
STATUS_MESSAGE = "rx_review_item status change refused: it needs its audit trail row (trail_id)"


def _backfill_chain(table_name: str, dialect: str) -> None:
    from rx_audit.queue import CHAIN_FIELDS, GENESIS, chain_hash

    bind = op.get_bind()
    table = sa.table(
        table_name,
        sa.column("id", sa.Integer()),
        *(
            sa.column(name, sa.DateTime(timezone=True) if name == "at" else sa.String())
            for name in CHAIN_FIELDS[table_name]
            if name not in ("chain_seq", "prev_hash", "item_id", "version")
        ),
        sa.column("item_id", sa.Integer()),
        sa.column("version", sa.Integer()),
        sa.column("chain_seq", sa.Integer()),
        sa.column("prev_hash", sa.String()),
        sa.column("row_hash", sa.String()),
    )
    rows = bind.execute(sa.select(table).order_by(table.c.id)).mappings().all()
    previous, seq = GENESIS, 0
    if rows:
        # The append-only triggers refuse UPDATE: only this migration (the owner) may add the chain.
        if dialect == "sqlite":
            op.execute(f"DROP TRIGGER IF EXISTS {table_name}_no_update")
        else:
            op.execute(f"ALTER TABLE {table_name} DISABLE TRIGGER {table_name}_append_only")
        for row in rows:
            seq += 1
            values = {**row, "chain_seq": seq, "prev_hash": previous}
            digest = chain_hash(table_name, values)
            bind.execute(
                table.update().where(table.c.id == row["id"]).values(chain_seq=seq, prev_hash=previous, row_hash=digest)
            )
            previous = digest
        if dialect == "sqlite":
            op.execute(
                f"CREATE TRIGGER {table_name}_no_update BEFORE UPDATE ON {table_name} "
                f"BEGIN SELECT RAISE(ABORT, '{table_name} is append-only: UPDATE refused'); END"
            )
        else:
            op.execute(f"ALTER TABLE {table_name} ENABLE TRIGGER {table_name}_append_only")
    heads = sa.table("rx_chain_head", sa.column("name"), sa.column("seq"), sa.column("last_hash"))
    bind.execute(heads.insert().values(name=table_name, seq=seq, last_hash=previous))


def _backfill_content() -> None:
    from rx_audit.queue import content_hash

    bind = op.get_bind()
    table = sa.table("rx_prescription", sa.column("id"), sa.column("payload"), sa.column("content_hash"))
    for row_id, payload in bind.execute(sa.select(table.c.id, table.c.payload)).all():
        try:
            value = json.loads(payload)
        except ValueError:
            value = payload
        bind.execute(table.update().where(table.c.id == row_id).values(content_hash=content_hash(value)))


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("rx_prescription") as batch:
        batch.add_column(sa.Column("content_hash", sa.String()))
        batch.add_column(sa.Column("source_line", sa.Integer()))
    op.create_index("ix_rx_prescription_content", "rx_prescription", ["prescription_id", "content_hash"])
    op.create_index("ix_rx_prescription_source_line", "rx_prescription", ["source", "source_line"])
    op.add_column("rx_review_item", sa.Column("trail_id", sa.Integer()))
    for table in CHAINED:
        op.add_column(table, sa.Column("chain_seq", sa.Integer()))
        op.add_column(table, sa.Column("prev_hash", sa.String()))
        op.add_column(table, sa.Column("row_hash", sa.String()))
    op.create_table(
        "rx_chain_head",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("last_hash", sa.String(), nullable=False),
    )
    for table in CHAINED:
        _backfill_chain(table, dialect)
        op.create_index(f"ux_{table}_chain_seq", table, ["chain_seq"], unique=True)
    _backfill_content()
    # Items decided before this revision point at the trail row that gave them their status.
    op.execute(
        "UPDATE rx_review_item SET trail_id = (SELECT max(t.id) FROM rx_audit_trail t "
        "WHERE t.item_id = rx_review_item.id AND t.to_status = rx_review_item.status) WHERE status <> 'pending'"
    )

    if dialect == "sqlite":
        for table in CHAINED:
            op.execute(
                f"CREATE TRIGGER {table}_no_replace BEFORE INSERT ON {table} "
                f"WHEN EXISTS (SELECT 1 FROM {table} WHERE id = NEW.id OR chain_seq = NEW.chain_seq) "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: REPLACE refused'); END"
            )
        op.execute(
            "CREATE TRIGGER rx_review_item_status_trail BEFORE UPDATE OF status ON rx_review_item "
            "WHEN NEW.status IS NOT OLD.status AND (NEW.trail_id IS NULL OR NEW.trail_id <= coalesce(OLD.trail_id, 0) "
            "OR NOT EXISTS (SELECT 1 FROM rx_audit_trail t WHERE t.id = NEW.trail_id AND t.item_id = NEW.id "
            "AND t.from_status IS OLD.status AND t.to_status IS NEW.status)) "
            f"BEGIN SELECT RAISE(ABORT, '{STATUS_MESSAGE}'); END"
        )
    elif dialect == "postgresql":
        # search_path is fixed at creation so a caller cannot point the check at a table of its own.
        op.execute(
            "CREATE OR REPLACE FUNCTION rx_status_needs_trail() RETURNS trigger LANGUAGE plpgsql "
            "SET search_path FROM CURRENT AS $$ BEGIN "
            "IF NEW.trail_id IS NULL OR NEW.trail_id <= coalesce(OLD.trail_id, 0) OR NOT EXISTS ("
            "SELECT 1 FROM rx_audit_trail t WHERE t.id = NEW.trail_id AND t.item_id = NEW.id "
            "AND t.from_status IS NOT DISTINCT FROM OLD.status AND t.to_status IS NOT DISTINCT FROM NEW.status) "
            f"THEN RAISE EXCEPTION USING MESSAGE = '{STATUS_MESSAGE}'; END IF; RETURN NEW; END $$"
        )
        op.execute(
            "CREATE TRIGGER rx_review_item_status_trail BEFORE UPDATE OF status ON rx_review_item "
            "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION rx_status_needs_trail()"
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS rx_review_item_status_trail")
        for table in CHAINED:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_replace")
    else:
        op.execute("DROP TRIGGER IF EXISTS rx_review_item_status_trail ON rx_review_item")
        op.execute("DROP FUNCTION IF EXISTS rx_status_needs_trail()")
    for table in CHAINED:
        op.drop_index(f"ux_{table}_chain_seq", table)
        with op.batch_alter_table(table) as batch:
            for column in ("row_hash", "prev_hash", "chain_seq"):
                batch.drop_column(column)
    op.drop_table("rx_chain_head")
    with op.batch_alter_table("rx_review_item") as batch:
        batch.drop_column("trail_id")
    op.drop_index("ix_rx_prescription_source_line", "rx_prescription")
    op.drop_index("ix_rx_prescription_content", "rx_prescription")
    with op.batch_alter_table("rx_prescription") as batch:
        batch.drop_column("source_line")
        batch.drop_column("content_hash")
