"""Alembic environment of the review queue.

The URL comes from the Alembic config (``sqlalchemy.url``), or an open connection is handed over
in ``config.attributes["connection"]`` by :func:`rx_audit.queue.migrate` (which holds the
migration lock and wraps every revision in its one transaction). The version table is
``rx_alembic_version`` so every table of the queue keeps the ``rx_`` prefix.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool
from sqlmodel import SQLModel

import rx_audit.queue  # noqa: F401  (registers the tables on SQLModel.metadata, for autogenerate)

VERSION_TABLE = "rx_alembic_version"
config = context.config
target_metadata = SQLModel.metadata


def _include(obj: object, name: str | None, type_: str, *_args: object) -> bool:
    # Other applications may share the database: only the queue's tables are ours.
    return type_ != "table" or bool(name and name.startswith("rx_"))


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
        include_object=_include,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection, target_metadata=target_metadata, version_table=VERSION_TABLE, include_object=_include
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(str(config.get_main_option("sqlalchemy.url")), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table=VERSION_TABLE,
            include_object=_include,
            transaction_per_migration=False,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
