"""Schema: versioned Alembic migrations (``rx_audit/migrations``), run once by ``rx-audit queue
migrate --db URL`` / :func:`migrate`, never on open: ``ReviewQueue(url)`` runs no DDL, it checks
the schema version and raises :class:`~rx_audit.errors.SchemaVersionError` when the database is not
at head (DDL on open deadlocked with live decisions on PostgreSQL). On PostgreSQL the owner role
runs the migrations and owns the tables; ``migrate(url, grant_to=[app_role])`` grants the
application role INSERT/SELECT only on the trail and decisions, so it can neither rewrite them nor
drop triggers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from rx_audit.queue import tables as _tables  # noqa: F401  (the tables on SQLModel.metadata, for autogenerate)
from rx_audit.queue.database import as_database_error, postgres_session, sqlite_file

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
SCHEMA_HEAD = "0005"  # the newest revision in rx_audit/migrations/versions (a test checks they agree)
VERSION_TABLE = "rx_alembic_version"


def _migration_engine(url: str, lock_timeout: float) -> Engine:
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": lock_timeout, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={int(lock_timeout * 1000)}")
            cursor.execute("PRAGMA journal_mode=WAL")  # persistent: set once here, not on every open
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")  # migrations serialise, DDL is transactional

        return engine
    engine = create_engine(url, connect_args={"connect_timeout": 10})

    @event.listens_for(engine, "connect")
    def _pg_connect(dbapi_connection: Any, _record: Any) -> None:
        # Migrations may wait longer for their locks than the application; never forever.
        postgres_session(dbapi_connection, max(lock_timeout, 30.0), 600.0)

    return engine


def _alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def schema_version(connection: Any) -> str | None:
    """The Alembic revision the database is at (None: no queue schema, or one made before migrations)."""
    from sqlalchemy import inspect

    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    versions = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return versions[0] if len(versions) == 1 else ",".join(sorted(versions)) or None


def _grant(connection: Any, roles: Sequence[str]) -> None:
    """The application role's rights: read everything, add trail and decisions, change items (status
    through the trail trigger) and the chain head; no UPDATE/DELETE/TRUNCATE of the trail or decisions,
    no ownership (so no ALTER TABLE … DISABLE TRIGGER)."""
    schema = connection.execute(text("SELECT current_schema()")).scalar_one()
    for role in roles:
        quoted = '"' + role.replace('"', '""') + '"'
        connection.exec_driver_sql(f'GRANT USAGE ON SCHEMA "{schema}" TO {quoted}')
        connection.exec_driver_sql(
            "GRANT SELECT, INSERT ON rx_prescription, rx_audit_result, rx_item_finding, rx_audit_trail, "
            f"rx_decision, rx_replay_error TO {quoted}"
        )
        connection.exec_driver_sql(f"GRANT SELECT, INSERT, UPDATE ON rx_review_item TO {quoted}")
        connection.exec_driver_sql(f"GRANT SELECT, UPDATE ON rx_chain_head TO {quoted}")
        connection.exec_driver_sql(f"GRANT SELECT, INSERT, UPDATE ON rx_webhook, rx_webhook_event TO {quoted}")
        connection.exec_driver_sql(f"GRANT SELECT, INSERT ON rx_cds_card, rx_cds_feedback TO {quoted}")
        connection.exec_driver_sql(f"GRANT SELECT ON {VERSION_TABLE} TO {quoted}")
        connection.exec_driver_sql(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "{schema}" TO {quoted}')
        connection.exec_driver_sql(
            f"REVOKE UPDATE, DELETE, TRUNCATE, TRIGGER, REFERENCES ON rx_audit_trail, rx_decision FROM {quoted}"
        )


def migrate(
    url: str, *, grant_to: Sequence[str] = (), revision: str = "head", lock_timeout: float = 30.0
) -> str | None:
    """Bring the database's schema to ``revision`` (default: head) and return the revision it is at.

    Run once per deployment or upgrade (``rx-audit queue migrate --db URL``), by the owner role on
    PostgreSQL; concurrent calls serialise (advisory lock / ``BEGIN IMMEDIATE``) and a database
    already at head gets no DDL. A database made before migrations (queue tables, no version
    table) is stamped ``0001`` first. ``grant_to``: application roles to grant their rights to
    (PostgreSQL; idempotent, re-run after every migration).
    """
    from alembic import command
    from sqlalchemy import inspect

    config = _alembic_config(url)
    engine = _migration_engine(url, lock_timeout)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(727172)"))
            config.attributes["connection"] = connection
            if schema_version(connection) is None and inspect(connection).has_table("rx_prescription"):
                command.stamp(config, "0001")
            command.upgrade(config, revision)
            if grant_to and connection.dialect.name == "postgresql":
                _grant(connection, grant_to)
            return schema_version(connection)
    except (DBAPIError, PoolTimeoutError) as error:
        failure = as_database_error(error, url)
        if failure is None:
            raise
        raise failure from error
    finally:
        engine.dispose()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head())
