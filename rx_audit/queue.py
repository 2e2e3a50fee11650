"""The pharmacist review queue (药师终审队列): flagged prescriptions wait for a pharmacist's decision.

Storage is sqlmodel on any SQLAlchemy URL; the default is a SQLite file (WAL), PostgreSQL works
the same (``postgresql+psycopg://…``). Tables (all prefixed ``rx_``):

* ``rx_prescription``   the payload as received, one row per (prescription id, version)
* ``rx_audit_result``   one audit of one version by one rulebook (hash, findings)
* ``rx_review_item``    a flagged audit result waiting for / decided by a pharmacist;
                        unique on (prescription id, version, rulebook): submitting twice adds nothing
* ``rx_item_finding``   the rules that fired on an item (for routing filters and statistics)
* ``rx_decision``       pharmacists' and doctors' decisions, coded reason + free text (append-only)
* ``rx_audit_trail``    who did what, when, from which state to which, and why (append-only:
                        UPDATE and DELETE are refused by database triggers on SQLite and PostgreSQL)

States of a review item::

    pending ──claim──▶ claimed ──approve──▶ approved
       ▲   ◀─lease expires──┘  └──return──▶ returned ──double_sign──▶ double_signed ─claim─▶ claimed …
       │                                       └──resubmit (new version, re-audited)──▶ new item pending
       └── timeout policy: hold (stay pending, logged) | escalate (escalated, first in line) | pass (auto_passed)

``pending``, ``double_signed`` and ``escalated`` items are *ready*: ``claim_next`` takes the ready
item that is escalated first, then the most severe, then the oldest.

Every write is one short transaction; on SQLite writes start with ``BEGIN IMMEDIATE`` (no lock
upgrade deadlocks between processes), on PostgreSQL ``claim_next`` uses ``FOR UPDATE SKIP LOCKED``.
All times are aware UTC; ``now`` arguments may be aware or naive (taken as UTC).
"""

from __future__ import annotations

import json
import os
import statistics as pystats
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, field_validator
from sqlalchemy import Column, Index, Text, UniqueConstraint, and_, event, func, insert, or_, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Field, Session, SQLModel, create_engine, select

from rx_audit.errors import NotFoundError, QueueError, StateError
from rx_audit.models import AuditResult, Prescription, parse_prescription

__all__ = [
    "READY_STATUSES",
    "STATUSES",
    "Decision",
    "PreparedRecord",
    "Reason",
    "ReviewDetail",
    "ReviewItem",
    "ReviewQueue",
    "SearchHit",
    "TrailEntry",
    "VersionInfo",
    "prepare_record",
]

Status = Literal["pending", "claimed", "approved", "returned", "double_signed", "escalated", "auto_passed"]
STATUSES: tuple[str, ...] = ("pending", "claimed", "approved", "returned", "double_signed", "escalated", "auto_passed")
READY_STATUSES: tuple[str, ...] = ("pending", "double_signed", "escalated")
FINAL_STATUSES: tuple[str, ...] = ("approved", "returned", "auto_passed")
TimeoutPolicy = Literal["hold", "escalate", "pass"]
SEVERITY_RANK = {None: 0, "info": 1, "warning": 2, "critical": 3}
_RANK_SEVERITY = {rank: name for name, rank in SEVERITY_RANK.items()}
DEFAULT_REASONS = Path(__file__).with_name("reasons.yaml")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime:
    """Aware UTC (sqlmodel stores aware datetimes); a naive value is taken as UTC."""
    if value is None:
        return _utcnow()
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _day(value: date | datetime | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)[:10]


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
    received_at: datetime = Field(default_factory=_utcnow)
    source: str = "his"
    previous_id: int | None = Field(default=None, foreign_key="rx_prescription.id")


class PrescriptionRow(PrescriptionBase, table=True):
    __tablename__ = "rx_prescription"
    __table_args__ = (UniqueConstraint("prescription_id", "version", name="uq_rx_prescription_version"),)
    id: int | None = Field(default=None, primary_key=True)
    payload: str = Field(sa_column=Column(Text, nullable=False))


class AuditResultBase(SQLModel):
    prescription_row_id: int = Field(foreign_key="rx_prescription.id", index=True)
    prescription_id: str = Field(index=True)
    version: int = 1
    rulebook: str
    flagged: bool = False
    severity: str | None = None
    audited_at: datetime = Field(default_factory=_utcnow)


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
    submitted_at: datetime = Field(default_factory=_utcnow)
    queued_at: datetime = Field(default_factory=_utcnow)
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
    at: datetime = Field(default_factory=_utcnow)


class DecisionRow(DecisionBase, table=True):
    __tablename__ = "rx_decision"
    id: int | None = Field(default=None, primary_key=True)


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
    at: datetime = Field(default_factory=_utcnow)


class TrailRow(TrailBase, table=True):
    __tablename__ = "rx_audit_trail"
    id: int | None = Field(default=None, primary_key=True)


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
    at: datetime = Field(default_factory=_utcnow)


_items = ReviewItemRow.__table__  # type: ignore[attr-defined]
Index(
    "ix_rx_review_item_next",
    _items.c.ready,
    _items.c.priority.desc(),
    _items.c.severity_rank.desc(),
    _items.c.submitted_at,
    _items.c.id,
)
Index(
    "ix_rx_review_item_status_order",
    _items.c.status,
    _items.c.priority.desc(),
    _items.c.severity_rank.desc(),
    _items.c.submitted_at,
    _items.c.id,
)
Index("ix_rx_review_item_lease", _items.c.status, _items.c.lease_expires_at)
Index("ix_rx_audit_result_rx", AuditResultRow.__table__.c.prescription_id, AuditResultRow.__table__.c.rulebook)  # type: ignore[attr-defined]

_TABLES = [
    PrescriptionRow.__table__,  # type: ignore[attr-defined]
    AuditResultRow.__table__,  # type: ignore[attr-defined]
    ReviewItemRow.__table__,  # type: ignore[attr-defined]
    ItemFindingRow.__table__,  # type: ignore[attr-defined]
    DecisionRow.__table__,  # type: ignore[attr-defined]
    TrailRow.__table__,  # type: ignore[attr-defined]
    ReplayErrorRow.__table__,  # type: ignore[attr-defined]
]
APPEND_ONLY_TABLES = ("rx_audit_trail", "rx_decision")


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part for part in value.split(",") if part]
    return value


class ReviewItem(ReviewItemBase):
    """A review item as the UI and an HIS see it."""

    id: int
    categories: list[str] = Field(default_factory=list)  # type: ignore[assignment]
    rules: list[str] = Field(default_factory=list)  # type: ignore[assignment]

    _split_categories = field_validator("categories", "rules", mode="before")(lambda cls, value: _split(value))

    @property
    def is_ready(self) -> bool:
        return self.status in READY_STATUSES


class Decision(DecisionBase):
    id: int


class TrailEntry(TrailBase):
    id: int


class VersionInfo(BaseModel):
    """One version of a prescription and what became of it."""

    version: int
    prescription_row_id: int
    received_at: datetime
    source: str
    item_id: int | None = None
    status: str | None = None
    severity: str | None = None
    rulebook: str | None = None


class ReviewDetail(BaseModel):
    """Everything a pharmacist needs to decide one item."""

    item: ReviewItem
    prescription: dict[str, Any]
    result: dict[str, Any]
    versions: list[VersionInfo]
    decisions: list[Decision]
    trail: list[TrailEntry]


class SearchHit(BaseModel):
    """One audited prescription version (flagged or not) found by :meth:`ReviewQueue.search`."""

    prescription_id: str
    version: int
    rulebook: str
    flagged: bool
    severity: str | None
    issued_at: datetime | None
    day: str | None
    facility_id: str | None
    facility_name: str | None
    department: str | None
    prescriber_id: str | None
    patient_id: str | None
    item_id: int | None = None
    status: str | None = None


class Reason(BaseModel):
    """A coded reason for a decision (``reasons.yaml``)."""

    code: str
    kind: Literal["approve", "return"]
    label: str
    label_en: str | None = None
    category: str | None = None


# --- preparing a record: pure, picklable, shared by submit() and replay workers ----------------------


@dataclass
class PreparedRecord:
    """Column values for one (prescription, audit result), computed once (e.g. in a replay worker)."""

    prescription: dict[str, Any]
    payload: str
    result: dict[str, Any]
    findings: list[tuple[str, str, str]]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return self.prescription["prescription_id"], self.prescription["version"]


def _as_payload(data: Any, rx: Prescription) -> dict[str, Any]:
    if isinstance(data, dict):
        return data
    if isinstance(data, (str, bytes)):
        loaded = json.loads(data)
        if isinstance(loaded, dict):
            return loaded
    return rx.model_dump(mode="json", exclude_none=True)


def prepare_record(
    data: Any,
    result: AuditResult | dict[str, Any],
    *,
    version: int | None = None,
    parsed: Prescription | None = None,
    raw: str | None = None,
) -> PreparedRecord:
    """Validate ``data`` and compute the rows to store; raises PrescriptionError / QueueError.

    JSON text (``data`` or ``raw``) is stored as received; a dict is stored as JSON; ``parsed``
    saves validating the prescription twice when the caller already has it.
    """
    rx = parsed if parsed is not None else parse_prescription(data)
    payload = _as_payload(data, rx)
    if not isinstance(result, AuditResult):
        result = AuditResult.model_validate(result)
    if result.id != rx.id:
        raise QueueError(f"审核结果 {result.id} 不属于处方 {rx.id} (result does not belong to the prescription)")
    if version is None:
        given = payload.get("version", 1)
        try:
            version = int(given)
        except (TypeError, ValueError):
            raise QueueError(f"处方 {rx.id}: version {given!r} 不是整数 (not an integer)") from None
    issued = rx.issued_at
    severity = result.severity.value if result.severity is not None else None
    findings = [(f.rule, str(f.category), str(f.severity)) for f in result.findings]
    return PreparedRecord(
        prescription={
            "prescription_id": rx.id,
            "version": version,
            "visit_type": rx.visit_type,
            "facility_id": rx.facility.id,
            "facility_name": rx.facility.name,
            "department": rx.department,
            "prescriber_id": rx.prescriber.id,
            "prescriber_name": rx.prescriber.name,
            "patient_id": rx.patient.id,
            "issued_at": _utc(issued) if issued is not None else None,
            "day": _day(issued),
        },
        payload=(
            raw.strip()
            if raw is not None
            else data.strip()
            if isinstance(data, str)
            else json.dumps(payload, ensure_ascii=False, default=str)
        ),
        result={
            "rulebook": result.rulebook,
            "flagged": bool(result.flagged),
            "severity": severity,
            "findings": json.dumps([f.to_contract() for f in result.findings], ensure_ascii=False, default=str),
        },
        findings=findings,
    )


# --- reasons -----------------------------------------------------------------------------------------


def load_reasons(*paths: str | Path | None) -> dict[str, Reason]:
    """The shipped reasons, then each extra YAML file merged by code (later files win)."""
    reasons: dict[str, Reason] = {}
    for path in (DEFAULT_REASONS, *paths):
        if not path:
            continue
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream) or {}
        for kind in ("approve", "return"):
            for entry in data.get(kind) or []:
                reason = Reason(kind=kind, **entry)
                reasons[reason.code] = reason
    return reasons


# --- the queue ---------------------------------------------------------------------------------------


class _LostRace(Exception):
    """A conditional UPDATE matched no row: another writer changed the item first."""


class ReviewQueue:
    """The review queue on one database. Thread-safe; one instance per process is enough.

    >>> q = ReviewQueue("sqlite:///queue.db")
    >>> item = q.submit(prescription, auditor.audit(prescription))   # None when not flagged
    >>> item = q.claim_next("ph01", facilities=["LZH"])
    >>> q.approve(item.id, "ph01", "A01", "已核实")
    """

    def __init__(
        self,
        url: str = "sqlite:///rx_audit.db",
        *,
        timeout_policy: TimeoutPolicy = "hold",
        timeout_seconds: float = 1800.0,
        reasons: str | Path | Sequence[str | Path] | None = None,
        echo: bool = False,
    ):
        if timeout_policy not in ("hold", "escalate", "pass"):
            raise QueueError(f"timeout_policy must be hold, escalate or pass, not {timeout_policy!r}")
        self.url = url
        self.timeout_policy: TimeoutPolicy = timeout_policy
        self.timeout_seconds = float(timeout_seconds)
        extra = [reasons] if isinstance(reasons, (str, Path)) else list(reasons or [])
        if os.environ.get("RX_AUDIT_REASONS"):
            extra.append(os.environ["RX_AUDIT_REASONS"])
        self._reasons = load_reasons(*extra)
        self.is_sqlite = url.startswith("sqlite")
        self.is_postgres = url.startswith("postgresql")
        self._engine, self._read_engine = self._make_engines(url, echo)
        self._lock = threading.Lock()
        self._create_schema()

    # --- setup ---------------------------------------------------------------------------------

    def _make_engines(self, url: str, echo: bool) -> tuple[Engine, Engine]:
        if not self.is_sqlite:
            engine = create_engine(url, echo=echo, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_timeout=120)
            return engine, engine

        def sqlite_engine(begin: str) -> Engine:
            engine = create_engine(
                url, echo=echo, connect_args={"timeout": 120, "check_same_thread": False}, pool_size=8, max_overflow=32
            )

            @event.listens_for(engine, "connect")
            def _connect(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA busy_timeout=120000")
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.close()

            @event.listens_for(engine, "begin")
            def _begin(connection: Any) -> None:
                connection.exec_driver_sql(begin)

            return engine

        return sqlite_engine("BEGIN IMMEDIATE"), sqlite_engine("BEGIN")

    def _create_schema(self) -> None:
        with self._engine.begin() as connection:
            if self.is_postgres:
                connection.execute(text("SELECT pg_advisory_xact_lock(727172)"))
            SQLModel.metadata.create_all(connection, tables=_TABLES)
            for table in APPEND_ONLY_TABLES:
                if self.is_sqlite:
                    for operation in ("UPDATE", "DELETE"):
                        connection.exec_driver_sql(
                            f"CREATE TRIGGER IF NOT EXISTS {table}_no_{operation.lower()} "
                            f"BEFORE {operation} ON {table} "
                            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {operation} refused'); END"
                        )
                elif self.is_postgres:
                    connection.exec_driver_sql(
                        "CREATE OR REPLACE FUNCTION rx_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
                        "BEGIN RAISE EXCEPTION USING MESSAGE = TG_TABLE_NAME || ' is append-only: ' "
                        "|| TG_OP || ' refused'; END $$"
                    )
                    connection.exec_driver_sql(
                        f"CREATE OR REPLACE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                        "FOR EACH ROW EXECUTE FUNCTION rx_append_only()"
                    )
                    connection.exec_driver_sql(
                        f"CREATE OR REPLACE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                        "FOR EACH STATEMENT EXECUTE FUNCTION rx_append_only()"
                    )

    def close(self) -> None:
        self._engine.dispose()
        if self._read_engine is not self._engine:
            self._read_engine.dispose()

    def __enter__(self) -> ReviewQueue:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self._engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self._read_engine, expire_on_commit=False) as session:
            yield session

    # --- helpers -------------------------------------------------------------------------------

    def _item_row(self, session: Session, item_id: int) -> ReviewItemRow:
        row = session.get(ReviewItemRow, item_id)
        if row is None:
            raise NotFoundError(f"审方任务 {item_id} 不存在 (no such review item)")
        return row

    def _move(
        self,
        session: Session,
        row: ReviewItemRow,
        to_status: str,
        *,
        actor: str,
        action: str,
        now: datetime,
        trail_code: str | None = None,
        note: str | None = None,
        expect_claimed_by: str | None = None,
        **values: Any,
    ) -> None:
        """Conditionally move one item (WHERE status is still what we read) and log it in the trail."""
        from_status = row.status
        values = {"status": to_status, "ready": int(to_status in READY_STATUSES), **values}
        if to_status in READY_STATUSES:
            values.setdefault("requeue_status", to_status)
        conditions = [_items.c.id == row.id, _items.c.status == from_status]
        if expect_claimed_by is not None:
            conditions.append(_items.c.claimed_by == expect_claimed_by)
        result = session.execute(update(_items).where(*conditions).values(**values))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise _LostRace
        session.add(
            TrailRow(
                item_id=row.id,
                prescription_id=row.prescription_id,
                version=row.version,
                actor=actor,
                action=action,
                from_status=from_status,
                to_status=to_status,
                reason_code=trail_code,
                reason=note,
                at=now,
            )
        )
        if row in session:
            session.expunge(row)  # the UPDATE above is the write; the ORM must not flush it again
        for key, value in values.items():
            setattr(row, key, value)

    def _reason(self, kind: str, code: str) -> Reason:
        reason = self._reasons.get(code)
        if reason is None or reason.kind != kind:
            known = ", ".join(r.code for r in self._reasons.values() if r.kind == kind)
            raise QueueError(f"未知的{kind}原因代码 {code!r} (unknown reason code; known: {known})")
        return reason

    @staticmethod
    def _public(row: ReviewItemRow) -> ReviewItem:
        return ReviewItem.model_validate(row)

    @staticmethod
    def _filters(
        *,
        status: str | Sequence[str] | None = None,
        facility: str | Sequence[str] | None = None,
        severity: str | Sequence[str] | None = None,
        category: str | Sequence[str] | None = None,
        department: str | Sequence[str] | None = None,
    ) -> list[Any]:
        def values(value: str | Sequence[str]) -> list[str]:
            return [value] if isinstance(value, str) else list(value)

        conditions: list[Any] = []
        if status is not None:
            conditions.append(_items.c.status.in_(values(status)))
        if facility is not None:
            conditions.append(_items.c.facility_id.in_(values(facility)))
        if severity is not None:
            conditions.append(_items.c.severity.in_(values(severity)))
        if department is not None:
            conditions.append(_items.c.department.in_(values(department)))
        if category is not None:
            conditions.append(or_(*[_items.c.categories.like(f"%,{c},%") for c in values(category)]))
        return conditions

    @staticmethod
    def _queue_order() -> list[Any]:
        return [_items.c.priority.desc(), _items.c.severity_rank.desc(), _items.c.submitted_at, _items.c.id]

    # --- submitting ----------------------------------------------------------------------------

    def submit(
        self, prescription: Any, result: AuditResult | dict[str, Any], *, source: str = "his"
    ) -> ReviewItem | None:
        """Store a prescription and its audit; queue it when flagged. Idempotent on (id, version, rulebook).

        ``prescription`` is a dict (stored as received), JSON text or :class:`Prescription`; its
        ``version`` field (default 1) is the version. Returns the review item (the existing one
        when submitted before) or None when the result is not flagged.
        """
        record = prepare_record(prescription, result)
        return self._store_one(record, source=source, actor=source)

    def resubmit(
        self, prescription_v2: Any, result: AuditResult | dict[str, Any], *, doctor_id: str
    ) -> ReviewItem | None:
        """The doctor's revision of a returned prescription: a new version, re-audited, linked.

        The latest item of the prescription must be ``returned``. The version is the payload's
        ``version`` when it is newer, else the latest version + 1. Returns the new item, or None
        when the revision is no longer flagged (the return is then resolved, logged in the trail).
        """
        rx = parse_prescription(prescription_v2)
        with self._read() as session:
            latest = session.exec(
                select(ReviewItemRow)
                .where(ReviewItemRow.prescription_id == rx.id)
                .order_by(ReviewItemRow.version.desc(), ReviewItemRow.id.desc())  # type: ignore[union-attr]
            ).first()
            max_version = session.exec(
                select(func.max(PrescriptionRow.version)).where(PrescriptionRow.prescription_id == rx.id)
            ).one()
        if latest is None:
            raise NotFoundError(f"处方 {rx.id} 没有审方记录 (nothing to resubmit)")
        payload = _as_payload(prescription_v2, rx)
        wanted = payload.get("version")
        version = int(wanted) if isinstance(wanted, int) and wanted > (max_version or 0) else (max_version or 0) + 1
        if latest.status != "returned":
            if isinstance(wanted, int) and wanted <= (max_version or 0):
                existing = self._find_item(rx.id, wanted, result)
                if existing is not None:
                    return existing  # a retried resubmit: idempotent
            raise StateError(
                f"处方 {rx.id} 当前状态为 {latest.status}，不能重新提交 (only a returned item can be revised)"
            )
        record = prepare_record(payload, result, version=version)
        with self._read() as session:
            previous_rx = session.get(PrescriptionRow, latest.prescription_row_id)
        record.extra = {"previous_id": previous_rx.id if previous_rx else None, "previous_item_id": latest.id}
        item = self._store_one(record, source="resubmit", actor=doctor_id)
        now = _utcnow()
        with self._write() as session:
            session.add(
                TrailRow(
                    item_id=latest.id,
                    prescription_id=latest.prescription_id,
                    version=latest.version,
                    actor=doctor_id,
                    action="resubmitted",
                    from_status="returned",
                    to_status="returned",
                    reason=(
                        f"新版本 v{version} → 审方任务 {item.id}"
                        if item
                        else f"新版本 v{version} 审核通过 (not flagged)"
                    ),
                    at=now,
                )
            )
        return item

    def _find_item(self, prescription_id: str, version: int, result: Any) -> ReviewItem | None:
        rulebook = result.rulebook if isinstance(result, AuditResult) else result.get("rulebook")
        with self._read() as session:
            row = session.exec(
                select(ReviewItemRow).where(
                    ReviewItemRow.prescription_id == prescription_id,
                    ReviewItemRow.version == version,
                    ReviewItemRow.rulebook == rulebook,
                )
            ).first()
        return self._public(row) if row else None

    def _store_one(self, record: PreparedRecord, *, source: str, actor: str) -> ReviewItem | None:
        outcome = self.store_prepared([record], source=source, actor=actor)[0]
        if outcome is None:
            return None
        with self._read() as session:
            return self._public(self._item_row(session, outcome))

    def store_prepared(
        self, records: Sequence[PreparedRecord], *, source: str = "replay", actor: str | None = None
    ) -> list[int | None]:
        """Store many prepared records in one transaction; for each, its review item id or None.

        Idempotent: a (prescription id, version) already stored keeps its first payload, an audit
        already stored for that rulebook adds nothing. Used by :meth:`submit` and by replay.
        """
        for attempt in range(8):
            try:
                with self._write() as session:
                    return self._store_prepared(session, records, source=source, actor=actor or source)
            except IntegrityError:
                if attempt == 7:
                    raise  # pragma: no cover - a persistent conflict is a bug, not a race
            except OperationalError as error:  # pragma: no cover - SQLite busy beyond its timeout
                if attempt == 7 or "locked" not in str(error):
                    raise
        raise AssertionError("unreachable")

    def _store_prepared(
        self, session: Session, records: Sequence[PreparedRecord], *, source: str, actor: str
    ) -> list[int | None]:
        now = _utcnow()
        rx_table = PrescriptionRow.__table__  # type: ignore[attr-defined]
        ar_table = AuditResultRow.__table__  # type: ignore[attr-defined]
        ids = sorted({r.key[0] for r in records})
        rx_ids: dict[tuple[str, int], int] = {}
        for start in range(0, len(ids), 500):
            for row_id, pid, version in session.execute(
                select(rx_table.c.id, rx_table.c.prescription_id, rx_table.c.version).where(
                    rx_table.c.prescription_id.in_(ids[start : start + 500])
                )
            ):
                rx_ids[(pid, version)] = row_id
        new_rx: dict[tuple[str, int], dict[str, Any]] = {}
        for record in records:
            if record.key not in rx_ids and record.key not in new_rx:
                new_rx[record.key] = {
                    **record.prescription,
                    "payload": record.payload,
                    "received_at": now,
                    "source": source,
                    "previous_id": record.extra.get("previous_id"),
                }
        if new_rx:
            rows = list(new_rx.values())
            inserted = self._insert_returning_ids(session, rx_table, rows)
            for row, row_id in zip(rows, inserted, strict=True):
                rx_ids[(row["prescription_id"], row["version"])] = row_id
        row_ids = sorted({rx_ids[r.key] for r in records})
        audited: dict[tuple[int, str], int] = {}
        for start in range(0, len(row_ids), 500):
            for audit_id, row_id, rulebook in session.execute(
                select(ar_table.c.id, ar_table.c.prescription_row_id, ar_table.c.rulebook).where(
                    ar_table.c.prescription_row_id.in_(row_ids[start : start + 500])
                )
            ):
                audited[(row_id, rulebook)] = audit_id
        fresh: list[tuple[int, PreparedRecord]] = []
        seen: set[tuple[int, str]] = set()
        for index, record in enumerate(records):
            audit_key = (rx_ids[record.key], record.result["rulebook"])
            if audit_key not in audited and audit_key not in seen:
                seen.add(audit_key)
                fresh.append((index, record))
        if fresh:
            rows = [
                {
                    "prescription_row_id": rx_ids[record.key],
                    "prescription_id": record.key[0],
                    "version": record.key[1],
                    "audited_at": now,
                    **record.result,
                }
                for _, record in fresh
            ]
            inserted = self._insert_returning_ids(session, ar_table, rows)
            for (_, record), audit_id in zip(fresh, inserted, strict=True):
                audited[(rx_ids[record.key], record.result["rulebook"])] = audit_id
        flagged = [(index, record) for index, record in fresh if record.result["flagged"]]
        if flagged:
            rows = []
            for _, record in flagged:
                rx = record.prescription
                severity = record.result["severity"]
                categories = sorted({category for _, category, _ in record.findings})
                rules = sorted({rule for rule, _, _ in record.findings})
                rows.append(
                    {
                        "prescription_id": rx["prescription_id"],
                        "version": rx["version"],
                        "rulebook": record.result["rulebook"],
                        "status": "pending",
                        "severity": severity,
                        "severity_rank": SEVERITY_RANK.get(severity, 0),
                        "categories": "," + ",".join(categories) + ("," if categories else ""),
                        "rules": "," + ",".join(rules) + ("," if rules else ""),
                        "facility_id": rx["facility_id"],
                        "facility_name": rx["facility_name"],
                        "department": rx["department"],
                        "prescriber_id": rx["prescriber_id"],
                        "patient_id": rx["patient_id"],
                        "day": rx["day"] or now.date().isoformat(),
                        "source": source,
                        "submitted_at": now,
                        "queued_at": now,
                        "previous_item_id": record.extra.get("previous_item_id"),
                        "priority": 0,
                        "prescription_row_id": rx_ids[record.key],
                        "audit_result_id": audited[(rx_ids[record.key], record.result["rulebook"])],
                        "ready": 1,
                        "requeue_status": "pending",
                    }
                )
            inserted = self._insert_returning_ids(session, _items, rows)
            finding_rows = []
            trail_rows = []
            for (_, record), item_id in zip(flagged, inserted, strict=True):
                for rule, category, severity in sorted(set(record.findings)):
                    finding_rows.append({"item_id": item_id, "rule": rule, "category": category, "severity": severity})
                trail_rows.append(
                    {
                        "item_id": item_id,
                        "prescription_id": record.key[0],
                        "version": record.key[1],
                        "actor": actor,
                        "action": "submitted",
                        "from_status": None,
                        "to_status": "pending",
                        "reason": f"审核标记 flagged: {record.result['severity']}",
                        "at": now,
                        "reason_code": None,
                    }
                )
            if finding_rows:
                session.execute(insert(ItemFindingRow.__table__), finding_rows)  # type: ignore[attr-defined]
            session.execute(insert(TrailRow.__table__), trail_rows)  # type: ignore[attr-defined]
        # Every record's item (new or existing), looked up by key.
        outcome: list[int | None] = [None] * len(records)
        wanted = {(r.key[0], r.key[1], r.result["rulebook"]) for r in records if r.result["flagged"]}
        if wanted:
            found: dict[tuple[str, int, str], int] = {}
            wanted_ids = sorted({key[0] for key in wanted})
            for start in range(0, len(wanted_ids), 500):
                for item_id, pid, version, rulebook in session.execute(
                    select(_items.c.id, _items.c.prescription_id, _items.c.version, _items.c.rulebook).where(
                        _items.c.prescription_id.in_(wanted_ids[start : start + 500])
                    )
                ):
                    found[(pid, version, rulebook)] = item_id
            for index, record in enumerate(records):
                outcome[index] = found.get((record.key[0], record.key[1], record.result["rulebook"]))
        return outcome

    def _insert_returning_ids(self, session: Session, table: Any, rows: list[dict[str, Any]]) -> list[int]:
        """Insert rows, returning their ids in order. On SQLite the write lock is ours (BEGIN
        IMMEDIATE), so ids are allocated here and the rows go in with one executemany — SQLite
        cannot order a multi-row RETURNING, which would make SQLAlchemy insert row by row."""
        if self.is_sqlite:
            start = int(session.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one())
            ids = list(range(start + 1, start + 1 + len(rows)))
            session.execute(insert(table), [{**row, "id": row_id} for row, row_id in zip(rows, ids, strict=True)])
            return ids
        inserted = session.execute(insert(table).returning(table.c.id, sort_by_parameter_order=True), rows).all()
        return [row_id for (row_id,) in inserted]

    def stored_keys(self, keys: Iterable[tuple[str, int]], rulebook: str) -> set[tuple[str, int]]:
        """Which (prescription id, version) of ``keys`` already have an audit by ``rulebook``."""
        keys = list(keys)
        ids = sorted({key[0] for key in keys})
        found: set[tuple[str, int]] = set()
        ar = AuditResultRow.__table__  # type: ignore[attr-defined]
        with self._read() as session:
            for start in range(0, len(ids), 500):
                for pid, version in session.execute(
                    select(ar.c.prescription_id, ar.c.version).where(
                        ar.c.prescription_id.in_(ids[start : start + 500]), ar.c.rulebook == rulebook
                    )
                ):
                    found.add((pid, version))
        return found & set(keys)

    def record_errors(self, source: str, errors: Sequence[Any]) -> int:
        """Store a batch's unreadable records (objects with line, id, field, error); repeats are ignored."""
        if not errors:
            return 0
        table = ReplayErrorRow.__table__  # type: ignore[attr-defined]
        now = _utcnow()
        with self._write() as session:
            lines = sorted({e.line or 0 for e in errors})
            known = {
                line
                for (line,) in session.execute(
                    select(table.c.line).where(table.c.source == source, table.c.line.in_(lines))
                )
            }
            rows, seen = [], set(known)
            for error in errors:
                line = error.line or 0
                if line in seen:
                    continue
                seen.add(line)
                rows.append(
                    {
                        "source": source,
                        "line": line,
                        "record_id": error.id,
                        "field": error.field,
                        "error": error.error,
                        "at": now,
                    }
                )
            if rows:
                session.execute(insert(table), rows)
            return len(rows)

    def batch_summary(self, source: str, rulebook: str | None = None) -> dict[str, Any]:
        """What a batch (``source``) holds: totals, flagged share, counts by severity/category/rule/
        facility/prescriber, and its unreadable records — the whole batch, across resumed runs."""
        rx = PrescriptionRow.__table__  # type: ignore[attr-defined]
        ar = AuditResultRow.__table__  # type: ignore[attr-defined]
        fi = ItemFindingRow.__table__  # type: ignore[attr-defined]
        errors_table = ReplayErrorRow.__table__  # type: ignore[attr-defined]
        audit_conditions = [rx.c.source == source]
        item_conditions = [_items.c.source == source]
        if rulebook:
            audit_conditions.append(ar.c.rulebook == rulebook)
            item_conditions.append(_items.c.rulebook == rulebook)
        with self._read() as session:
            total, flagged = session.execute(
                select(func.count(), func.coalesce(func.sum(func.cast(ar.c.flagged, _int_type())), 0))
                .select_from(ar.join(rx, ar.c.prescription_row_id == rx.c.id))
                .where(*audit_conditions)
            ).one()

            def grouped(column: Any, top: int = 50) -> dict[str, int]:
                stmt = (
                    select(column, func.count())
                    .select_from(_items)
                    .where(*item_conditions)
                    .group_by(column)
                    .order_by(func.count().desc())
                    .limit(top)
                )
                return {str(k) if k is not None else "(none)": int(n) for k, n in session.execute(stmt)}

            def by_finding(column: Any, top: int = 50) -> dict[str, int]:
                counted = func.count(func.distinct(fi.c.item_id))
                stmt = (
                    select(column, counted)
                    .select_from(fi.join(_items, fi.c.item_id == _items.c.id))
                    .where(*item_conditions)
                    .group_by(column)
                    .order_by(counted.desc())
                    .limit(top)
                )
                return {str(k): int(n) for k, n in session.execute(stmt)}

            error_count = session.execute(
                select(func.count()).select_from(errors_table).where(errors_table.c.source == source)
            ).scalar_one()
            error_samples = [
                {"line": line, "id": record_id, "field": field_name, "error": error}
                for line, record_id, field_name, error in session.execute(
                    select(errors_table.c.line, errors_table.c.record_id, errors_table.c.field, errors_table.c.error)
                    .where(errors_table.c.source == source)
                    .order_by(errors_table.c.line)
                    .limit(50)
                )
            ]
            return {
                "source": source,
                "rulebook": rulebook,
                "total": int(total),
                "flagged": int(flagged),
                "flagged_share": _ratio(int(flagged), int(total)),
                "errors": int(error_count),
                "error_samples": error_samples,
                "by_severity": grouped(_items.c.severity),
                "by_category": by_finding(fi.c.category),
                "by_rule": by_finding(fi.c.rule),
                "by_facility": grouped(_items.c.facility_id),
                "by_prescriber": grouped(_items.c.prescriber_id),
                "by_day": dict(sorted(grouped(_items.c.day, top=400).items())),
            }

    # --- claiming ------------------------------------------------------------------------------

    def claim_next(
        self,
        pharmacist_id: str,
        *,
        facilities: Sequence[str] | None = None,
        severity: str | Sequence[str] | None = None,
        category: str | Sequence[str] | None = None,
        department: str | Sequence[str] | None = None,
        lease_seconds: float = 600,
        now: datetime | None = None,
    ) -> ReviewItem | None:
        """Claim the ready item that is escalated first, most severe, then oldest; None when none is left.

        ``facilities`` limits the claim to the facilities the pharmacist serves (county hub routing).
        Leases that have expired are released first (logged), so a crashed session never blocks.
        """
        conditions = [
            _items.c.ready == 1,
            *self._filters(facility=facilities, severity=severity, category=category, department=department),
        ]
        for _attempt in range(50):
            moment = _utc(now)
            try:
                with self._write() as session:
                    self._release_expired(session, moment, limit=500)
                    stmt = select(ReviewItemRow).where(*conditions).order_by(*self._queue_order()).limit(1)
                    if self.is_postgres:
                        stmt = stmt.with_for_update(skip_locked=True)
                    row = session.exec(stmt).first()
                    if row is None:
                        return None
                    self._move(
                        session,
                        row,
                        "claimed",
                        actor=pharmacist_id,
                        action="claim",
                        now=moment,
                        note=f"lease {int(lease_seconds)}s",
                        claimed_by=pharmacist_id,
                        claimed_at=moment,
                        lease_expires_at=moment + timedelta(seconds=lease_seconds),
                    )
                    return self._public(row)
            except _LostRace:
                continue
        raise QueueError("claim_next: too much contention, try again")

    def claim(
        self, item_id: int, pharmacist_id: str, lease_seconds: float = 600, *, now: datetime | None = None
    ) -> ReviewItem:
        """Claim one item: ready, or claimed with an expired lease, or yours (renews the lease)."""
        moment = _utc(now)
        try:
            with self._write() as session:
                row = self._item_row(session, item_id)
                if row.status == "claimed":
                    live = row.lease_expires_at is not None and row.lease_expires_at > moment
                    if live and row.claimed_by != pharmacist_id:
                        raise StateError(f"审方任务 {item_id} 已被 {row.claimed_by} 领取 (claimed by someone else)")
                    action = "renew" if row.claimed_by == pharmacist_id else "claim_expired"
                elif row.status in READY_STATUSES:
                    action = "claim"
                else:
                    raise StateError(f"审方任务 {item_id} 状态为 {row.status}，不能领取 (cannot be claimed)")
                self._move(
                    session,
                    row,
                    "claimed",
                    actor=pharmacist_id,
                    action=action,
                    now=moment,
                    note=f"lease {int(lease_seconds)}s",
                    claimed_by=pharmacist_id,
                    claimed_at=moment,
                    lease_expires_at=moment + timedelta(seconds=lease_seconds),
                )
                return self._public(row)
        except _LostRace:
            raise StateError(f"审方任务 {item_id} 刚被他人更改 (changed concurrently), retry") from None

    def release_expired(self, now: datetime | None = None) -> int:
        """Put every claimed item whose lease has expired back in line (logged); the number released."""
        with self._write() as session:
            return self._release_expired(session, _utc(now), limit=None)

    def _release_expired(self, session: Session, now: datetime, *, limit: int | None) -> int:
        stmt = select(ReviewItemRow).where(_items.c.status == "claimed", _items.c.lease_expires_at < now)
        if limit:
            stmt = stmt.limit(limit)
        if self.is_postgres:
            stmt = stmt.with_for_update(skip_locked=True)
        released = 0
        for row in session.exec(stmt).all():
            try:
                self._move(
                    session,
                    row,
                    row.requeue_status or "pending",
                    actor="system",
                    action="lease_expired",
                    now=now,
                    note=f"{row.claimed_by} 的领取已过期 (lease expired at {row.lease_expires_at:%Y-%m-%d %H:%M:%S})",
                    claimed_by=None,
                    claimed_at=None,
                    lease_expires_at=None,
                    queued_at=now,
                )
                released += 1
            except _LostRace:
                continue
        return released

    # --- deciding ------------------------------------------------------------------------------

    def _decide(
        self,
        item_id: int,
        pharmacist_id: str,
        reason_code: str,
        comment: str,
        *,
        kind: str,
        to_status: str,
        now: datetime | None,
    ) -> ReviewItem:
        reason = self._reason(kind, reason_code)
        moment = _utc(now)
        try:
            with self._write() as session:
                row = self._item_row(session, item_id)
                if row.status != "claimed" or row.claimed_by != pharmacist_id:
                    raise StateError(
                        f"审方任务 {item_id} 状态为 {row.status}（领取人 {row.claimed_by}），{pharmacist_id} 不能决定 "
                        "(claim the item first)"
                    )
                self._move(
                    session,
                    row,
                    to_status,
                    actor=pharmacist_id,
                    action=kind,
                    now=moment,
                    trail_code=reason_code,
                    note=f"{reason.label}{('：' + comment) if comment else ''}",
                    expect_claimed_by=pharmacist_id,
                    decided_by=pharmacist_id,
                    decided_at=moment,
                    reason_code=reason_code,
                    lease_expires_at=None,
                )
                session.add(
                    DecisionRow(
                        item_id=row.id,
                        prescription_id=row.prescription_id,
                        version=row.version,
                        actor=pharmacist_id,
                        role="pharmacist",
                        action=kind,
                        reason_code=reason_code,
                        comment=comment,
                        at=moment,
                    )
                )
                return self._public(row)
        except _LostRace:
            raise StateError(f"审方任务 {item_id} 刚被他人更改 (changed concurrently)") from None

    def approve(
        self, item_id: int, pharmacist_id: str, reason_code: str, comment: str = "", *, now: datetime | None = None
    ) -> ReviewItem:
        """Pass a claimed item (审核通过) with a coded reason (``reasons("approve")``) and free text."""
        return self._decide(item_id, pharmacist_id, reason_code, comment, kind="approve", to_status="approved", now=now)

    def return_to_doctor(
        self, item_id: int, pharmacist_id: str, reason_code: str, comment: str = "", *, now: datetime | None = None
    ) -> ReviewItem:
        """Return a claimed item to the doctor (退回医生) with a coded reason (``reasons("return")``)."""
        return self._decide(item_id, pharmacist_id, reason_code, comment, kind="return", to_status="returned", now=now)

    def double_sign(
        self, prescription_id: str, doctor_id: str, reason: str, *, now: datetime | None = None
    ) -> ReviewItem:
        """The doctor insists (双签) with a reason: the returned item goes back in line as ``double_signed``."""
        if not reason or not reason.strip():
            raise QueueError("双签必须注明理由 (a double signature needs a reason)")
        moment = _utc(now)
        try:
            with self._write() as session:
                row = session.exec(
                    select(ReviewItemRow)
                    .where(ReviewItemRow.prescription_id == prescription_id)
                    .order_by(ReviewItemRow.version.desc(), ReviewItemRow.id.desc())  # type: ignore[union-attr]
                ).first()
                if row is None:
                    raise NotFoundError(f"处方 {prescription_id} 没有审方记录 (no review item)")
                if row.status != "returned":
                    raise StateError(f"处方 {prescription_id} 当前状态为 {row.status}，只有退回的处方可以双签")
                self._move(
                    session,
                    row,
                    "double_signed",
                    actor=doctor_id,
                    action="double_sign",
                    now=moment,
                    note=reason,
                    double_sign_reason=reason,
                    queued_at=moment,
                    claimed_by=None,
                    claimed_at=None,
                    lease_expires_at=None,
                    decided_by=None,
                    decided_at=None,
                    reason_code=None,
                )
                session.add(
                    DecisionRow(
                        item_id=row.id,
                        prescription_id=row.prescription_id,
                        version=row.version,
                        actor=doctor_id,
                        role="doctor",
                        action="double_sign",
                        comment=reason,
                        at=moment,
                    )
                )
                return self._public(row)
        except _LostRace:
            raise StateError(f"处方 {prescription_id} 刚被他人更改 (changed concurrently)") from None

    def apply_timeout_policy(self, now: datetime | None = None) -> int:
        """Act on ready items nobody reviewed within ``timeout_seconds``; each action is logged with its reason.

        ``hold`` (default; 医疗机构处方审核规范: no prescription is dispensed or paid before review)
        keeps the item pending and logs it once; ``escalate`` moves it to ``escalated`` (claimed
        first); ``pass`` auto-passes it (``auto_passed``, a system decision). Returns the number acted on.
        """
        moment = _utc(now)
        cutoff = moment - timedelta(seconds=self.timeout_seconds)
        minutes = self.timeout_seconds / 60
        acted = 0
        with self._write() as session:
            stmt = select(ReviewItemRow).where(
                _items.c.ready == 1, _items.c.queued_at < cutoff, _items.c.timeout_action.is_(None)
            )
            if self.is_postgres:
                stmt = stmt.with_for_update(skip_locked=True)
            for row in session.exec(stmt).all():
                base = f"{minutes:g} 分钟内无人审核 (not reviewed within {minutes:g} min)"
                try:
                    if self.timeout_policy == "hold":
                        self._move(
                            session,
                            row,
                            row.status,
                            actor="system",
                            action="timeout_hold",
                            now=moment,
                            note=base + "：保持拦截，未经审核不得收费调配 (held)",
                            timeout_action="hold",
                        )
                    elif self.timeout_policy == "escalate":
                        self._move(
                            session,
                            row,
                            "escalated",
                            actor="system",
                            action="timeout_escalate",
                            now=moment,
                            note=base + "：升级处理 (escalated)",
                            timeout_action="escalate",
                            priority=1,
                        )
                    else:
                        self._move(
                            session,
                            row,
                            "auto_passed",
                            actor="system",
                            action="timeout_pass",
                            now=moment,
                            note=base + "：按超时策略自动通过 (auto-passed by policy)",
                            timeout_action="pass",
                            decided_by="system",
                            decided_at=moment,
                            reason_code="TIMEOUT",
                        )
                        session.add(
                            DecisionRow(
                                item_id=row.id,
                                prescription_id=row.prescription_id,
                                version=row.version,
                                actor="system",
                                role="system",
                                action="timeout_pass",
                                reason_code="TIMEOUT",
                                comment=base,
                                at=moment,
                            )
                        )
                    acted += 1
                except _LostRace:
                    continue
        return acted

    # --- reading -------------------------------------------------------------------------------

    def get(self, item_id: int) -> ReviewDetail:
        """The item with its prescription payload, audit findings, versions, decisions and trail."""
        with self._read() as session:
            row = self._item_row(session, item_id)
            rx = session.get(PrescriptionRow, row.prescription_row_id)
            audit = session.get(AuditResultRow, row.audit_result_id)
            assert rx is not None and audit is not None
            versions = []
            rx_rows = session.exec(
                select(PrescriptionRow)
                .where(PrescriptionRow.prescription_id == row.prescription_id)
                .order_by(PrescriptionRow.version)  # type: ignore[arg-type]
            ).all()
            items_by_version = {
                (r.version): r
                for r in session.exec(
                    select(ReviewItemRow)
                    .where(ReviewItemRow.prescription_id == row.prescription_id)
                    .order_by(ReviewItemRow.id)  # type: ignore[arg-type]
                ).all()
            }
            for version_row in rx_rows:
                item = items_by_version.get(version_row.version)
                versions.append(
                    VersionInfo(
                        version=version_row.version,
                        prescription_row_id=version_row.id or 0,
                        received_at=version_row.received_at,
                        source=version_row.source,
                        item_id=item.id if item else None,
                        status=item.status if item else None,
                        severity=item.severity if item else None,
                        rulebook=item.rulebook if item else None,
                    )
                )
            decisions = session.exec(
                select(DecisionRow).where(DecisionRow.prescription_id == row.prescription_id).order_by(DecisionRow.id)  # type: ignore[arg-type]
            ).all()
            trail = session.exec(
                select(TrailRow).where(TrailRow.prescription_id == row.prescription_id).order_by(TrailRow.id)  # type: ignore[arg-type]
            ).all()
            return ReviewDetail(
                item=self._public(row),
                prescription=json.loads(rx.payload),
                result={
                    "id": row.prescription_id,
                    "flagged": audit.flagged,
                    "severity": audit.severity,
                    "rulebook": audit.rulebook,
                    "findings": json.loads(audit.findings),
                },
                versions=versions,
                decisions=[Decision.model_validate(d) for d in decisions],
                trail=[TrailEntry.model_validate(t) for t in trail],
            )

    def list_items(
        self,
        status: str | Sequence[str] | None = None,
        facility: str | Sequence[str] | None = None,
        severity: str | Sequence[str] | None = None,
        category: str | Sequence[str] | None = None,
        department: str | Sequence[str] | None = None,
        limit: int = 50,
        offset: int = 0,
        *,
        order: Literal["queue", "newest"] | None = None,
    ) -> list[ReviewItem]:
        """One page of items. Order: queue order (escalated, most severe, oldest) when every asked
        status is a ready one, else newest first; ``order`` overrides."""
        conditions = self._filters(
            status=status, facility=facility, severity=severity, category=category, department=department
        )
        statuses = [status] if isinstance(status, str) else list(status or [])
        if order is None:
            order = "queue" if statuses and all(s in READY_STATUSES for s in statuses) else "newest"
        ordering = self._queue_order() if order == "queue" else [_items.c.id.desc()]
        with self._read() as session:
            rows = session.exec(
                select(ReviewItemRow).where(*conditions).order_by(*ordering).limit(limit).offset(offset)
            ).all()
            return [self._public(row) for row in rows]

    def count(
        self,
        status: str | Sequence[str] | None = None,
        facility: str | Sequence[str] | None = None,
        severity: str | Sequence[str] | None = None,
        category: str | Sequence[str] | None = None,
        department: str | Sequence[str] | None = None,
    ) -> int:
        conditions = self._filters(
            status=status, facility=facility, severity=severity, category=category, department=department
        )
        with self._read() as session:
            return int(session.execute(select(func.count()).select_from(_items).where(*conditions)).scalar_one())

    def oldest_pending_age_seconds(self, now: datetime | None = None) -> float | None:
        """Seconds the longest-waiting ready item has waited (since queued), or None when none waits."""
        with self._read() as session:
            oldest = session.execute(select(func.min(_items.c.queued_at)).where(_items.c.ready == 1)).scalar_one()
        if oldest is None:
            return None
        return max((_utc(now) - oldest).total_seconds(), 0.0)

    def search(
        self,
        prescription_id: str | None = None,
        patient_id: str | None = None,
        prescriber_id: str | None = None,
        facility_id: str | None = None,
        date_from: date | datetime | str | None = None,
        date_to: date | datetime | str | None = None,
        verdict: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[SearchHit]:
        """Audited prescription versions, flagged or not, newest first.

        ``verdict``: ``flagged`` | ``clean`` | any item status (``approved``, ``returned``…).
        Dates (inclusive) are issue dates as the HIS wrote them.
        """
        rx = PrescriptionRow.__table__  # type: ignore[attr-defined]
        ar = AuditResultRow.__table__  # type: ignore[attr-defined]
        joined = ar.join(rx, ar.c.prescription_row_id == rx.c.id).outerjoin(
            _items, and_(_items.c.audit_result_id == ar.c.id)
        )
        conditions: list[Any] = []
        if prescription_id:
            conditions.append(ar.c.prescription_id == prescription_id)
        if patient_id:
            conditions.append(rx.c.patient_id == patient_id)
        if prescriber_id:
            conditions.append(rx.c.prescriber_id == prescriber_id)
        if facility_id:
            conditions.append(rx.c.facility_id == facility_id)
        if date_from:
            conditions.append(rx.c.day >= _day(date_from))
        if date_to:
            conditions.append(rx.c.day <= _day(date_to))
        if verdict == "flagged":
            conditions.append(ar.c.flagged.is_(True))
        elif verdict == "clean":
            conditions.append(ar.c.flagged.is_(False))
        elif verdict:
            conditions.append(_items.c.status == verdict)
        stmt = (
            select(
                ar.c.prescription_id,
                ar.c.version,
                ar.c.rulebook,
                ar.c.flagged,
                ar.c.severity,
                rx.c.issued_at,
                rx.c.day,
                rx.c.facility_id,
                rx.c.facility_name,
                rx.c.department,
                rx.c.prescriber_id,
                rx.c.patient_id,
                _items.c.id.label("item_id"),
                _items.c.status,
            )
            .select_from(joined)
            .where(*conditions)
            .order_by(ar.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        with self._read() as session:
            return [SearchHit.model_validate(dict(row._mapping)) for row in session.execute(stmt)]

    def reasons(self, kind: Literal["approve", "return"] = "approve") -> list[Reason]:
        """The coded reasons a pharmacist picks from (shipped ``reasons.yaml`` + extensions)."""
        return [reason for reason in self._reasons.values() if reason.kind == kind]

    # --- statistics ----------------------------------------------------------------------------

    def statistics(
        self, date_from: date | datetime | str | None = None, date_to: date | datetime | str | None = None
    ) -> dict[str, Any]:
        """Figures for the pharmacy committee over issue dates [date_from, date_to] (inclusive).

        ``held_rate``: flagged audits / all audits; ``pass_after_review_rate`` and ``returned_rate``:
        of the items a pharmacist decided; ``time_to_decision_seconds``: from submission to
        decision; counts by severity/category/rule/facility/prescriber/day; ``rule_override``: per
        rule, of the decided items it fired on, how often the pharmacist approved anyway.
        """
        rx = PrescriptionRow.__table__  # type: ignore[attr-defined]
        ar = AuditResultRow.__table__  # type: ignore[attr-defined]
        fi = ItemFindingRow.__table__  # type: ignore[attr-defined]
        day_from, day_to = _day(date_from), _day(date_to)

        def period(column: Any) -> list[Any]:
            out = []
            if day_from:
                out.append(column >= day_from)
            if day_to:
                out.append(column <= day_to)
            return out

        item_period = period(_items.c.day)
        with self._read() as session:

            def grouped(column: Any, *, top: int | None = None) -> dict[str, int]:
                stmt = select(column, func.count()).select_from(_items).where(*item_period).group_by(column)
                stmt = stmt.order_by(func.count().desc())
                if top:
                    stmt = stmt.limit(top)
                return {str(key) if key is not None else "(none)": int(n) for key, n in session.execute(stmt)}

            audits = session.execute(
                select(func.count(), func.coalesce(func.sum(func.cast(ar.c.flagged, _int_type())), 0))
                .select_from(ar.join(rx, ar.c.prescription_row_id == rx.c.id))
                .where(*period(rx.c.day))
            ).one()
            total_audits, flagged_audits = int(audits[0]), int(audits[1])
            by_status = grouped(_items.c.status)
            approved, returned = by_status.get("approved", 0), by_status.get("returned", 0)
            double_signed_items = int(
                session.execute(
                    select(func.count())
                    .select_from(_items)
                    .where(*item_period, _items.c.double_sign_reason.is_not(None))
                ).scalar_one()
            )
            decided = approved + returned
            durations = [
                (decided_at - submitted_at).total_seconds()
                for submitted_at, decided_at in session.execute(
                    select(_items.c.submitted_at, _items.c.decided_at).where(
                        *item_period, _items.c.status.in_(("approved", "returned"))
                    )
                )
            ]
            by_finding = (
                select(fi.c.rule, fi.c.category, _items.c.status)
                .select_from(fi.join(_items, fi.c.item_id == _items.c.id))
                .where(*item_period)
                .subquery()
            )
            by_rule_rows = session.execute(
                select(
                    by_finding.c.rule,
                    func.count(),
                    func.sum(func.cast(by_finding.c.status == "approved", _int_type())),
                    func.sum(func.cast(by_finding.c.status == "returned", _int_type())),
                )
                .group_by(by_finding.c.rule)
                .order_by(func.count().desc())
            ).all()
            by_category = {
                str(category): int(n)
                for category, n in session.execute(
                    select(fi.c.category, func.count(func.distinct(fi.c.item_id)))
                    .select_from(fi.join(_items, fi.c.item_id == _items.c.id))
                    .where(*item_period)
                    .group_by(fi.c.category)
                    .order_by(func.count(func.distinct(fi.c.item_id)).desc())
                )
            }
            stats: dict[str, Any] = {
                "date_from": day_from,
                "date_to": day_to,
                "prescriptions": total_audits,
                "flagged": flagged_audits,
                "items": sum(by_status.values()),
                "total": sum(by_status.values()),
                "pending": sum(by_status.get(s, 0) for s in READY_STATUSES),
                "claimed": by_status.get("claimed", 0),
                "approved": approved,
                "returned": returned,
                "auto_passed": by_status.get("auto_passed", 0),
                "escalated": by_status.get("escalated", 0),
                "double_signed": double_signed_items,
                "held_rate": _ratio(flagged_audits, total_audits),
                "decided": decided,
                "pass_after_review_rate": _ratio(approved, decided),
                "returned_rate": _ratio(returned, decided),
                "time_to_decision_seconds": _distribution(durations),
                "by_status": by_status,
                "by_severity": grouped(_items.c.severity),
                "by_category": by_category,
                "by_rule": {str(rule): int(n) for rule, n, _a, _r in by_rule_rows},
                "by_facility": grouped(_items.c.facility_id),
                "by_prescriber": grouped(_items.c.prescriber_id, top=100),
                "by_day": dict(sorted(grouped(_items.c.day).items())),
                "rule_override": [
                    {
                        "rule": str(rule),
                        "fired": int(n),
                        "decided": int(a or 0) + int(r or 0),
                        "approved": int(a or 0),
                        "returned": int(r or 0),
                        "override_rate": _ratio(int(a or 0), int(a or 0) + int(r or 0)),
                    }
                    for rule, n, a, r in by_rule_rows
                ],
            }
        return stats


def _int_type() -> Any:
    from sqlalchemy import Integer

    return Integer


def _ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def _distribution(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "mean": None, "median": None, "p90": None, "max": None}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "mean": round(pystats.fmean(ordered), 1),
        "median": round(pystats.median(ordered), 1),
        "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1),
        "max": round(ordered[-1], 1),
    }
