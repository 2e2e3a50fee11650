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

Schema: versioned Alembic migrations (``rx_audit/migrations``), run once by ``rx-audit queue
migrate --db URL`` / :func:`migrate`, never on open: ``ReviewQueue(url)`` runs no DDL, it checks
the schema version and raises :class:`SchemaVersionError` when the database is not at head
(DDL on open deadlocked with live decisions on PostgreSQL). On PostgreSQL the owner role runs the
migrations and owns the tables; ``migrate(url, grant_to=[app_role])`` grants the application role
INSERT/SELECT only on the trail and decisions, so it can neither rewrite them nor drop triggers.

Tamper evidence: ``rx_audit_trail`` and ``rx_decision`` are hash chains (each row stores the
previous row's hash and its own over a canonical serialisation, :func:`chain_hash`); writers
serialise on the chain head row (``rx_chain_head``, locked ``FOR UPDATE`` on PostgreSQL, under
``BEGIN IMMEDIATE`` on SQLite); :meth:`ReviewQueue.verify` / ``rx-audit queue verify`` walks them.
A status change must name a new trail row recording exactly that change (``trail_id``; a trigger
refuses it otherwise), and every status change is written with its trail row in one transaction.

Versions: the same prescription id with the same content (canonical JSON) is a *repeat* (nothing
stored; :meth:`ReviewQueue.submit_outcome` says so), with different content a *new version*
(audited and queued). NUL characters, which PostgreSQL refuses in text, are stored escaped as the
six characters ``\\u0000`` in every column (JSON payloads keep their own ``\\u0000`` escape).

Scope: every read and every action on an item id takes ``scope`` — the facility ids the caller may
see (None: unrestricted, for admins and the CLI); an item outside it is :class:`NotFoundError`,
exactly as if it did not exist.

Failures of the database: transient errors (connection refused or lost, deadlock, serialisation
failure, lock not granted) are retried with bounded back-off, then a :class:`DatabaseError`
subclass with one clear line and the URL's password masked. Locks wait at most ``lock_timeout``
seconds (SQLite busy_timeout, PostgreSQL lock_timeout). A SQLite file that is not writable is
opened read-only (``mode=ro``; ``immutable`` when its directory is read-only too): reads work,
writes raise :class:`DatabaseReadOnlyError`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import statistics as pystats
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, field_validator
from sqlalchemy import Column, Index, Text, UniqueConstraint, and_, event, func, insert, or_, text, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlmodel import Field, Session, SQLModel, create_engine, select

from rx_audit.errors import (
    DatabaseError,
    DatabaseFullError,
    DatabaseLockedError,
    DatabaseReadOnlyError,
    DatabaseUnavailableError,
    NotFoundError,
    QueueError,
    ReasonRequiredError,
    SchemaVersionError,
    StateError,
)
from rx_audit.models import AuditResult, Prescription, parse_prescription

__all__ = [
    "READY_STATUSES",
    "SCHEMA_HEAD",
    "STATUSES",
    "Decision",
    "PreparedRecord",
    "Reason",
    "ReviewDetail",
    "ReviewItem",
    "ReviewQueue",
    "SearchHit",
    "StoreOutcome",
    "Submission",
    "TrailEntry",
    "VerifyResult",
    "VersionInfo",
    "chain_hash",
    "content_hash",
    "mask_url",
    "migrate",
    "prepare_record",
    "schema_version",
]

Status = Literal["pending", "claimed", "approved", "returned", "double_signed", "escalated", "auto_passed"]
STATUSES: tuple[str, ...] = ("pending", "claimed", "approved", "returned", "double_signed", "escalated", "auto_passed")
READY_STATUSES: tuple[str, ...] = ("pending", "double_signed", "escalated")
FINAL_STATUSES: tuple[str, ...] = ("approved", "returned", "auto_passed")
TimeoutPolicy = Literal["hold", "escalate", "pass"]
SEVERITY_RANK = {None: 0, "info": 1, "warning": 2, "critical": 3}
_RANK_SEVERITY = {rank: name for name, rank in SEVERITY_RANK.items()}
DEFAULT_REASONS = Path(__file__).with_name("reasons.yaml")
MIGRATIONS = Path(__file__).with_name("migrations")
SCHEMA_HEAD = "0002"  # the newest revision in rx_audit/migrations/versions (a test checks they agree)
VERSION_TABLE = "rx_alembic_version"
DEFAULT_LOCK_TIMEOUT = 8.0


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
    content_hash: str | None = Field(default=None, description="sha256 of the canonical JSON of the payload")
    source_line: int | None = Field(default=None, description="line of the batch file it was replayed from")


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
    at: datetime = Field(default_factory=_utcnow)


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
    at: datetime = Field(default_factory=_utcnow)


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
Index(
    "ix_rx_prescription_content",
    PrescriptionRow.__table__.c.prescription_id,  # type: ignore[attr-defined]
    PrescriptionRow.__table__.c.content_hash,  # type: ignore[attr-defined]
)
Index(
    "ix_rx_prescription_source_line",
    PrescriptionRow.__table__.c.source,  # type: ignore[attr-defined]
    PrescriptionRow.__table__.c.source_line,  # type: ignore[attr-defined]
)
Index("ux_rx_audit_trail_chain_seq", TrailRow.__table__.c.chain_seq, unique=True)  # type: ignore[attr-defined]
Index("ux_rx_decision_chain_seq", DecisionRow.__table__.c.chain_seq, unique=True)  # type: ignore[attr-defined]

_TABLES = [
    PrescriptionRow.__table__,  # type: ignore[attr-defined]
    AuditResultRow.__table__,  # type: ignore[attr-defined]
    ReviewItemRow.__table__,  # type: ignore[attr-defined]
    ItemFindingRow.__table__,  # type: ignore[attr-defined]
    DecisionRow.__table__,  # type: ignore[attr-defined]
    TrailRow.__table__,  # type: ignore[attr-defined]
    ReplayErrorRow.__table__,  # type: ignore[attr-defined]
    ChainHeadRow.__table__,  # type: ignore[attr-defined]
]
APPEND_ONLY_TABLES = ("rx_audit_trail", "rx_decision")
_trail = TrailRow.__table__  # type: ignore[attr-defined]
_decisions = DecisionRow.__table__  # type: ignore[attr-defined]
_heads = ChainHeadRow.__table__  # type: ignore[attr-defined]

# --- canonical content: NUL escaping, content hash, hash chain ---------------------------------------

GENESIS = "0" * 64
CHAIN_FIELDS: dict[str, tuple[str, ...]] = {
    "rx_audit_trail": (
        "chain_seq", "prev_hash", "item_id", "prescription_id", "version", "actor", "action",
        "from_status", "to_status", "reason_code", "reason", "at",
    ),
    "rx_decision": (
        "chain_seq", "prev_hash", "item_id", "prescription_id", "version", "actor", "role", "action",
        "reason_code", "comment", "at",
    ),
}  # fmt: skip


def clean_text(value: Any) -> Any:
    """PostgreSQL refuses NUL in text: store it as the six characters ``\\u0000`` (strings, recursively)."""
    if isinstance(value, str):
        return value.replace("\x00", "\\u0000") if "\x00" in value else value
    if isinstance(value, dict):
        return {clean_text(k): clean_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_text(v) for v in value]
    return value


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def content_hash(payload: Any) -> str:
    """What makes two submissions of one prescription id "the same": sha256 of the canonical JSON
    (keys sorted, NUL escaped as stored), so key order and whitespace do not make a new version."""
    return hashlib.sha256(_canonical_json(clean_text(payload)).encode("utf-8")).hexdigest()


def _canon(value: Any) -> Any:
    if isinstance(value, datetime):
        return _utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # SQLite gives naive UTC back, PostgreSQL aware
    return value


def chain_hash(table: str, row: Any) -> str:
    """The hash of one trail/decision row: sha256 over the table name and its chained fields
    (``CHAIN_FIELDS``, which include ``prev_hash`` and ``chain_seq``), canonical JSON."""
    get = row.get if isinstance(row, dict) else row.__getitem__
    data = {name: _canon(get(name)) for name in CHAIN_FIELDS[table]}
    return hashlib.sha256(_canonical_json([table, data]).encode("utf-8")).hexdigest()


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
    extra: dict[str, Any] = field(default_factory=dict)  # previous_id, previous_item_id, explicit_version, line
    content_hash: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return self.prescription["prescription_id"], self.prescription["version"]


@dataclass(frozen=True)
class StoreOutcome:
    """What storing one record did.

    ``kind``: ``stored`` (a new prescription, or a new audit of a stored one by another rulebook),
    ``new_version`` (same id, different content: stored as the next version, audited, queued when
    flagged), ``repeat`` (same id and same content, already audited by this rulebook: nothing
    stored). ``item_id`` is the review item of that version and rulebook (new or existing) when
    the audit is flagged.
    """

    kind: Literal["stored", "new_version", "repeat"]
    prescription_id: str
    version: int
    flagged: bool
    item_id: int | None = None


class Submission(BaseModel):
    """:meth:`ReviewQueue.submit_outcome`: what became of one submission."""

    kind: Literal["stored", "new_version", "repeat"]
    prescription_id: str
    version: int
    flagged: bool
    item: ReviewItem | None = None

    @property
    def outcome(self) -> str:
        """``queued`` | ``not_flagged`` | ``new_version`` | ``repeat`` — for a log line or a reply."""
        if self.kind != "stored":
            return self.kind
        return "queued" if self.flagged else "not_flagged"


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
    explicit = version is not None
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
    findings = clean_text([(f.rule, str(f.category), str(f.severity)) for f in result.findings])
    columns = {
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
    }
    text_payload = (
        raw.strip()
        if raw is not None
        else data.strip()
        if isinstance(data, str)
        else json.dumps(payload, ensure_ascii=False, default=str)
    )
    return PreparedRecord(
        prescription=clean_text(columns),
        payload=clean_text(text_payload),
        result={
            "rulebook": clean_text(result.rulebook),
            "flagged": bool(result.flagged),
            "severity": severity,
            "findings": json.dumps([f.to_contract() for f in result.findings], ensure_ascii=False, default=str),
        },
        findings=[tuple(f) for f in findings],
        extra={"explicit_version": explicit},
        content_hash=content_hash(payload),
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


@dataclass
class _RxRef:
    """One version of a prescription while storing: stored (id known) or about to be inserted."""

    version: int
    content_hash: str | None
    id: int | None = None
    previous: _RxRef | None = None


class _LostRace(Exception):
    """A conditional UPDATE matched no row: another writer changed the item first."""


# --- the database: URLs, failures, migrations ----------------------------------------------------


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages and logs)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: say nothing of it
        return "<database URL>"


_operation = threading.local()
# PostgreSQL SQLSTATEs: 08* connection, 57P0x shutdown, 40001 serialisation, 40P01 deadlock, 55P03 lock
# not available, 57014 statement timeout, 25006 read-only transaction, 53100 disk full, 42501 privilege.
_PG_UNAVAILABLE = ("08", "57P01", "57P02", "57P03")
_TEXT_UNAVAILABLE = (
    "connection refused",
    "could not connect",
    "server closed the connection",
    "connection is closed",
    "terminating connection",
    "connection timeout",
    "timeout expired",
    "the database system is",
)


def _classify(error: BaseException, url: str) -> tuple[DatabaseError | None, int]:
    """The DatabaseError a driver error stands for and how many attempts it deserves (None: not ours)."""
    where = mask_url(url)
    if isinstance(error, PoolTimeoutError):
        return DatabaseLockedError(f"数据库连接池已满，等待超时 (connection pool exhausted): {where}", where), 3
    orig = getattr(error, "orig", None)
    state = str(getattr(orig, "sqlstate", "") or "")
    lines = str(orig if orig is not None else error).strip().splitlines()
    message = lines[0] if lines else type(error).__name__
    lowered = message.lower()
    invalidated = isinstance(error, DBAPIError) and error.connection_invalidated
    if invalidated or state.startswith(_PG_UNAVAILABLE) or any(t in lowered for t in _TEXT_UNAVAILABLE):
        return DatabaseUnavailableError(f"无法连接数据库 (database unavailable): {where}: {message}", where), 5
    if state in ("40001", "40P01") or "deadlock" in lowered:
        return DatabaseLockedError(
            f"数据库事务冲突，重试后仍失败 (deadlock/serialisation): {where}: {message}", where
        ), 5
    if state in ("55P03", "57014") or "database is locked" in lowered or "database table is locked" in lowered:
        return DatabaseLockedError(f"数据库被锁定，等待超时 (lock timeout): {where}: {message}", where), 2
    if state == "25006" or "readonly" in lowered or "read-only" in lowered:
        return DatabaseReadOnlyError(f"数据库只读，不能写入 (database is read-only): {where}", where), 1
    if state == "53100" or "disk is full" in lowered or "no space left" in lowered:
        return DatabaseFullError(f"磁盘或数据库已满 (disk or database full): {where}: {message}", where), 1
    if state == "42501":
        return DatabaseError(f"数据库权限不足 (permission denied): {where}: {message}", where), 1
    if "unable to open database file" in lowered or "disk i/o error" in lowered:
        return DatabaseUnavailableError(f"无法打开数据库文件 (cannot open the database file): {where}", where), 1
    return None, 0


def _db_operation(method: Any) -> Any:
    """Retry transient database errors with bounded back-off; then one clear DatabaseError. Nested
    operations (submit → store_prepared) leave the retrying to the outermost one."""

    @functools.wraps(method)
    def wrapper(self: ReviewQueue, *args: Any, **kwargs: Any) -> Any:
        if getattr(_operation, "depth", 0):
            return method(self, *args, **kwargs)
        _operation.depth = 1
        try:
            attempt = 0
            while True:
                try:
                    return method(self, *args, **kwargs)
                except (DBAPIError, PoolTimeoutError) as error:
                    failure, attempts = _classify(error, self.url)
                    if failure is None:
                        raise
                    attempt += 1
                    if attempt >= attempts:
                        raise failure from error
                    time.sleep(min(2.0, 0.2 * 2 ** (attempt - 1)))
        finally:
            _operation.depth = 0

    return wrapper


def _sqlite_file(url: str) -> Path | None:
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _sqlite_read_only(url: str) -> tuple[bool, bool]:
    """(read-only, immutable): ``?mode=ro`` in the URL, or a file/directory without write bits —
    checked on the mode bits too, because root may write a 0444 file the operator meant to freeze."""
    query = make_url(url).query
    path = _sqlite_file(url)
    directory_frozen = path is not None and path.parent.exists() and not _writable(path.parent)
    if query.get("mode") == "ro":
        return True, directory_frozen
    if path is None or not path.exists():
        return False, False
    return (not _writable(path) or directory_frozen), directory_frozen


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def _sqlite_connect_pragmas(dbapi_connection: Any, lock_timeout: float, read_only: bool) -> None:
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(lock_timeout * 1000)}")
    if not read_only:
        cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # Belt and braces for REPLACE: with recursive triggers on, a REPLACE fires the DELETE trigger too
    # (the BEFORE INSERT trigger of migration 0002 refuses it on any connection).
    cursor.execute("PRAGMA recursive_triggers=ON")
    cursor.close()


def _postgres_session(dbapi_connection: Any, lock_timeout: float, statement_timeout: float) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"SET lock_timeout = {int(lock_timeout * 1000)}")
    cursor.execute(f"SET statement_timeout = {int(statement_timeout * 1000)}")
    cursor.execute("SET idle_in_transaction_session_timeout = 600000")
    cursor.execute("SET TIME ZONE 'UTC'")
    cursor.close()
    dbapi_connection.commit()


def _migration_engine(url: str, lock_timeout: float) -> Engine:
    if url.startswith("sqlite"):
        path = _sqlite_file(url)
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
        _postgres_session(dbapi_connection, max(lock_timeout, 30.0), 600.0)

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
        failure, _ = _classify(error, url)
        if failure is None:
            raise
        raise failure from error
    finally:
        engine.dispose()


def _head_revision() -> str:
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head())


@dataclass
class VerifyResult:
    """:meth:`ReviewQueue.verify`: the chains and item statuses, intact or where they first break."""

    ok: bool
    rows: int
    table: str | None = None
    row_id: int | None = None
    problem: str | None = None

    @property
    def message(self) -> str:
        if self.ok:
            return f"verified {self.rows} rows: trail, decisions and item statuses intact (完整)"
        return f"broken at {self.table} id {self.row_id}: {self.problem} (审计记录被篡改 tampered)"


class ReviewQueue:
    """The review queue on one database. Thread-safe; one instance per process is enough.

    >>> q = ReviewQueue("sqlite:///queue.db")       # after `rx-audit queue migrate --db sqlite:///queue.db`
    >>> item = q.submit(prescription, auditor.audit(prescription))   # None when not flagged
    >>> item = q.claim_next("ph01", facilities=["LZH"], scope=["LZH", "HXZ"])
    >>> q.approve(item.id, "ph01", "A01", "已核实", scope=["LZH", "HXZ"])
    """

    def __init__(
        self,
        url: str = "sqlite:///rx_audit.db",
        *,
        timeout_policy: TimeoutPolicy = "hold",
        timeout_seconds: float = 1800.0,
        reasons: str | Path | Sequence[str | Path] | None = None,
        echo: bool = False,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        statement_timeout: float = 300.0,
        read_only: bool | None = None,
    ):
        if timeout_policy not in ("hold", "escalate", "pass"):
            raise QueueError(f"timeout_policy must be hold, escalate or pass, not {timeout_policy!r}")
        self.url = url
        self.timeout_policy: TimeoutPolicy = timeout_policy
        self.timeout_seconds = float(timeout_seconds)
        self.lock_timeout = float(lock_timeout)
        self.statement_timeout = float(statement_timeout)
        extra = [reasons] if isinstance(reasons, (str, Path)) else list(reasons or [])
        if os.environ.get("RX_AUDIT_REASONS"):
            extra.append(os.environ["RX_AUDIT_REASONS"])
        self._reasons = load_reasons(*extra)
        self.is_sqlite = url.startswith("sqlite")
        self.is_postgres = url.startswith("postgresql")
        immutable = False
        if self.is_sqlite and read_only is None:
            read_only, immutable = _sqlite_read_only(url)
        self.read_only = bool(read_only)
        self._engine, self._read_engine = self._make_engines(url, echo, immutable)
        self._lock = threading.Lock()
        self.schema_version = self._check_schema()

    # --- setup ---------------------------------------------------------------------------------

    def _make_engines(self, url: str, echo: bool, immutable: bool) -> tuple[Engine, Engine]:
        lock_timeout, statement_timeout, read_only = self.lock_timeout, self.statement_timeout, self.read_only
        if not self.is_sqlite:
            engine = create_engine(
                url,
                echo=echo,
                pool_pre_ping=True,
                pool_size=5,
                max_overflow=10,
                pool_timeout=max(30.0, lock_timeout * 4),
                connect_args={"connect_timeout": 10},
            )

            @event.listens_for(engine, "connect")
            def _pg_connect(dbapi_connection: Any, _record: Any) -> None:
                _postgres_session(dbapi_connection, lock_timeout, statement_timeout)
                if read_only:
                    cursor = dbapi_connection.cursor()
                    cursor.execute("SET default_transaction_read_only = on")
                    cursor.close()
                    dbapi_connection.commit()

            return engine, engine

        path = _sqlite_file(url)
        if read_only and path is not None:
            # A read-only file (or directory) opens only through a URI with mode=ro (immutable when
            # the directory is frozen too, since then SQLite cannot create the WAL's -shm file).
            uri = f"file:{path.resolve()}?mode=ro" + ("&immutable=1" if immutable else "")
            url = "sqlite:///" + uri + "&uri=true"

        def sqlite_engine(begin: str) -> Engine:
            engine = create_engine(
                url,
                echo=echo,
                connect_args={"timeout": lock_timeout, "check_same_thread": False},
                pool_size=8,
                max_overflow=32,
                pool_timeout=max(30.0, lock_timeout * 4),
            )

            @event.listens_for(engine, "connect")
            def _connect(dbapi_connection: Any, _record: Any) -> None:
                _sqlite_connect_pragmas(dbapi_connection, lock_timeout, read_only)

            @event.listens_for(engine, "begin")
            def _begin(connection: Any) -> None:
                connection.exec_driver_sql(begin)

            return engine

        if read_only:
            engine = sqlite_engine("BEGIN")
            return engine, engine
        return sqlite_engine("BEGIN IMMEDIATE"), sqlite_engine("BEGIN")

    @_db_operation
    def _check_schema(self) -> str:
        """No DDL here: the schema is the migrations' (DDL on open deadlocked with live decisions)."""
        with self._read_engine.connect() as connection:
            version = schema_version(connection)
        if version != SCHEMA_HEAD:
            raise SchemaVersionError(
                f"审方队列数据库结构版本为 {version or '(无)'}，需要 {SCHEMA_HEAD}：请先运行 "
                f"`rx-audit queue migrate --db {mask_url(self.url)}` "
                f"(database schema is at {version or 'none'}, needs {SCHEMA_HEAD}: run the migrate command)"
            )
        return version

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
        if self.read_only:
            raise DatabaseReadOnlyError(
                f"数据库以只读方式打开，不能写入 (database opened read-only): {mask_url(self.url)}", mask_url(self.url)
            )
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

    # --- the hash chain ------------------------------------------------------------------------

    def _append(self, session: Session, table: Any, rows: list[dict[str, Any]]) -> list[int]:
        """Append rows to a chained table: lock its chain head (first append of the transaction),
        link and hash each row, insert, move the head. Returns the new ids in order."""
        key = ("rx_chain", table.name)
        head = session.info.get(key)
        if head is None:
            stmt = select(_heads.c.seq, _heads.c.last_hash).where(_heads.c.name == table.name)
            if self.is_postgres:
                stmt = stmt.with_for_update()
            found = session.execute(stmt).one_or_none()
            if found is None:
                raise SchemaVersionError(f"{table.name}: 缺少哈希链头 (no chain head): run `rx-audit queue migrate`")
            head = (int(found[0]), str(found[1]))
        seq, last = head
        linked = []
        for row in rows:
            seq += 1
            row = {**clean_text(row), "chain_seq": seq, "prev_hash": last}
            row["row_hash"] = last = chain_hash(table.name, row)
            linked.append(row)
        ids = self._insert_returning_ids(session, table, linked)
        session.execute(update(_heads).where(_heads.c.name == table.name).values(seq=seq, last_hash=last))
        session.info[key] = (seq, last)
        return ids

    @_db_operation
    def verify(self) -> VerifyResult:
        """Walk both hash chains (content, links, sequence, head) and check every item's status is the
        one its last trail row recorded. The first break is reported; nothing is changed."""
        rows = 0
        with self._read() as session:
            for table in (_trail, _decisions):
                unchained = session.execute(
                    select(table.c.id).where(table.c.chain_seq.is_(None)).order_by(table.c.id).limit(1)
                ).scalar_one_or_none()
                if unchained is not None:
                    return VerifyResult(False, rows, table.name, unchained, "row outside the hash chain (no chain_seq)")
                previous, expected = GENESIS, 1
                last_id: int | None = None
                result = session.execute(select(table).order_by(table.c.chain_seq).execution_options(yield_per=2000))
                for row in result.mappings():
                    if row["chain_seq"] != expected:
                        return VerifyResult(
                            False, rows, table.name, row["id"], f"chain_seq {row['chain_seq']}, expected {expected}"
                        )
                    if row["prev_hash"] != previous:
                        return VerifyResult(
                            False, rows, table.name, row["id"], "prev_hash does not match the row before"
                        )
                    digest = chain_hash(table.name, row)
                    if row["row_hash"] != digest:
                        return VerifyResult(False, rows, table.name, row["id"], "row_hash does not match its content")
                    previous, expected, last_id = digest, expected + 1, row["id"]
                    rows += 1
                head = session.execute(
                    select(_heads.c.seq, _heads.c.last_hash).where(_heads.c.name == table.name)
                ).one_or_none()
                if head is None or (int(head[0]), head[1]) != (expected - 1, previous):
                    return VerifyResult(
                        False, rows, table.name, last_id, "chain head does not match the last row (rows removed?)"
                    )
            # Every item's status is what its last trail row says it became.
            mismatch = session.execute(
                select(_items.c.id, _items.c.status, _trail.c.to_status, _trail.c.item_id)
                .select_from(_items.outerjoin(_trail, _trail.c.id == _items.c.trail_id))
                .where(
                    or_(
                        and_(_items.c.trail_id.is_(None), _items.c.status != "pending"),
                        and_(
                            _items.c.trail_id.is_not(None),
                            or_(
                                _trail.c.id.is_(None),
                                _trail.c.item_id != _items.c.id,
                                _trail.c.to_status != _items.c.status,
                            ),
                        ),
                    )
                )
                .order_by(_items.c.id)
                .limit(1)
            ).first()
            if mismatch is not None:
                return VerifyResult(
                    False,
                    rows,
                    "rx_review_item",
                    mismatch[0],
                    f"status {mismatch[1]!r} is not the one its last trail row recorded ({mismatch[2]!r})",
                )
        return VerifyResult(True, rows)

    # --- helpers -------------------------------------------------------------------------------

    def _item_row(self, session: Session, item_id: int, scope: Sequence[str] | None = None) -> ReviewItemRow:
        row = session.get(ReviewItemRow, item_id)
        # Outside the caller's scope is the same answer as absent: existence is not revealed.
        if row is None or (scope is not None and row.facility_id not in set(scope)):
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
        """Move one item and log it in the trail, in this transaction: the trail row first (the status
        trigger wants its id), so the row is re-read — locked on PostgreSQL — and must still be in
        the state we read, else another writer won (_LostRace, nothing written)."""
        from_status = row.status
        current_stmt = select(_items.c.status, _items.c.claimed_by).where(_items.c.id == row.id)
        if self.is_postgres:
            current_stmt = current_stmt.with_for_update()
        current = session.execute(current_stmt).one_or_none()
        if current is None or current[0] != from_status:
            raise _LostRace
        if expect_claimed_by is not None and current[1] != expect_claimed_by:
            raise _LostRace
        [trail_id] = self._append(
            session,
            _trail,
            [
                {
                    "item_id": row.id,
                    "prescription_id": row.prescription_id,
                    "version": row.version,
                    "actor": actor,
                    "action": action,
                    "from_status": from_status,
                    "to_status": to_status,
                    "reason_code": trail_code,
                    "reason": note,
                    "at": now,
                }
            ],
        )
        values = {"status": to_status, "ready": int(to_status in READY_STATUSES), "trail_id": trail_id, **values}
        if to_status in READY_STATUSES:
            values.setdefault("requeue_status", to_status)
        result = session.execute(
            update(_items).where(_items.c.id == row.id, _items.c.status == from_status).values(**clean_text(values))
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]  # pragma: no cover - the row is ours (lock / IMMEDIATE)
            raise _LostRace
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
        scope: Sequence[str] | None = None,
    ) -> list[Any]:
        def values(value: str | Sequence[str]) -> list[str]:
            return [value] if isinstance(value, str) else list(value)

        conditions: list[Any] = []
        if scope is not None:
            conditions.append(_items.c.facility_id.in_(_scope(scope)))
        if status is not None:
            conditions.append(_items.c.status.in_(values(status)))
        if facility is not None:
            conditions.append(_items.c.facility_id.in_(values(facility)))
        if severity is not None:
            conditions.append(_items.c.severity.in_(values(severity)))
        if department is not None:
            conditions.append(_items.c.department.in_(values(department)))
        if category is not None:
            conditions.append(
                or_(*[_items.c.categories.like(f"%,{_like_escape(c)},%", escape="\\") for c in values(category)])
            )
        return conditions

    @staticmethod
    def _queue_order() -> list[Any]:
        return [_items.c.priority.desc(), _items.c.severity_rank.desc(), _items.c.submitted_at, _items.c.id]

    # --- submitting ----------------------------------------------------------------------------

    def submit(
        self, prescription: Any, result: AuditResult | dict[str, Any], *, source: str = "his"
    ) -> ReviewItem | None:
        """Store a prescription and its audit; queue it when flagged. Idempotent on (id, content, rulebook).

        ``prescription`` is a dict (stored as received), JSON text or :class:`Prescription`. The same
        id with other content is a new version (the doctor's fix, another facility's numbering):
        stored, audited and queued. Returns the review item — new, or the existing one for a repeat
        of a flagged submission — or None when this audit is not flagged. To tell a repeat or a
        new version apart, use :meth:`submit_outcome`.
        """
        return self.submit_outcome(prescription, result, source=source).item

    @_db_operation
    def submit_outcome(
        self, prescription: Any, result: AuditResult | dict[str, Any], *, source: str = "his"
    ) -> Submission:
        """:meth:`submit`, saying what happened: ``stored`` / ``new_version`` / ``repeat`` and the item."""
        record = prepare_record(prescription, result)
        outcome = self.store_prepared([record], source=source, actor=source)[0]
        return self._submission(outcome)

    def _submission(self, outcome: StoreOutcome) -> Submission:
        item = None
        if outcome.item_id is not None:
            with self._read() as session:
                item = self._public(self._item_row(session, outcome.item_id))
        return Submission(
            kind=outcome.kind,
            prescription_id=outcome.prescription_id,
            version=outcome.version,
            flagged=outcome.flagged,
            item=item,
        )

    @_db_operation
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
        record.extra.update(previous_id=latest.prescription_row_id, previous_item_id=latest.id)
        outcome = self.store_prepared([record], source="resubmit", actor=doctor_id)[0]
        item = self._submission(outcome).item
        now = _utcnow()
        with self._write() as session:
            self._append(
                session,
                _trail,
                [
                    {
                        "item_id": latest.id,
                        "prescription_id": latest.prescription_id,
                        "version": latest.version,
                        "actor": doctor_id,
                        "action": "resubmitted",
                        "from_status": "returned",
                        "to_status": "returned",
                        "reason_code": None,
                        "reason": (
                            f"新版本 v{version} → 审方任务 {item.id}"
                            if item
                            else f"新版本 v{version} 审核通过 (not flagged)"
                        ),
                        "at": now,
                    }
                ],
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

    @_db_operation
    def store_prepared(
        self, records: Sequence[PreparedRecord], *, source: str = "replay", actor: str | None = None
    ) -> list[StoreOutcome]:
        """Store many prepared records in one transaction; for each, what became of it (:class:`StoreOutcome`).

        Per prescription id: content already stored is a repeat (a new audit only for a new
        rulebook), other content is the next version — records of one call are taken in order. A
        record with an explicit version (:meth:`resubmit`) is stored as that version. Used by
        :meth:`submit` and by replay.
        """
        for attempt in range(8):
            try:
                with self._write() as session:
                    return self._store_prepared(session, records, source=source, actor=actor or source)
            except IntegrityError:
                if attempt == 7:
                    raise  # pragma: no cover - a persistent conflict is a bug, not a race
        raise AssertionError("unreachable")

    def _store_prepared(
        self, session: Session, records: Sequence[PreparedRecord], *, source: str, actor: str
    ) -> list[StoreOutcome]:
        now = _utcnow()
        rx_table = PrescriptionRow.__table__  # type: ignore[attr-defined]
        ar_table = AuditResultRow.__table__  # type: ignore[attr-defined]
        ids = sorted({r.key[0] for r in records})
        known: dict[str, list[_RxRef]] = {pid: [] for pid in ids}
        for start in range(0, len(ids), 500):
            for row_id, pid, version, digest in session.execute(
                select(rx_table.c.id, rx_table.c.prescription_id, rx_table.c.version, rx_table.c.content_hash)
                .where(rx_table.c.prescription_id.in_(ids[start : start + 500]))
                .order_by(rx_table.c.version)
            ):
                known[pid].append(_RxRef(version=version, content_hash=digest, id=row_id))
        # Which stored (or new) version each record is, in order: a later record of the same id sees
        # the versions the earlier ones made.
        plan: list[tuple[_RxRef, str]] = []
        new_refs: list[tuple[_RxRef, dict[str, Any]]] = []
        for record in records:
            pid, version = record.key
            versions = known[pid]
            explicit = bool(record.extra.get("explicit_version"))
            same_version = next((ref for ref in versions if ref.version == version), None)
            same_content = next((ref for ref in versions if ref.content_hash == record.content_hash), None)
            if explicit and same_version is not None:
                plan.append((same_version, "existing"))
                continue
            if not explicit and same_content is not None:
                plan.append((same_content, "existing"))
                continue
            kind = "stored"
            previous = record.extra.get("previous_id")
            previous_ref: _RxRef | None = None
            if same_version is not None:  # same id, same version number, other content: the next version
                kind = "new_version"
                version = max(ref.version for ref in versions) + 1
                previous_ref = max(versions, key=lambda ref: ref.version)
            ref = _RxRef(version=version, content_hash=record.content_hash, previous=previous_ref)
            versions.append(ref)
            new_refs.append(
                (
                    ref,
                    {
                        **record.prescription,
                        "version": version,
                        "payload": record.payload,
                        "received_at": now,
                        "source": source,
                        "previous_id": previous,
                        "content_hash": record.content_hash,
                        "source_line": record.extra.get("line"),
                    },
                )
            )
            plan.append((ref, kind))
        # Insert new versions in waves: a version's previous_id may be a row of this same call.
        waiting = new_refs
        while waiting:
            ready = [(ref, row) for ref, row in waiting if ref.previous is None or ref.previous.id is not None]
            rows = []
            for ref, row in ready:
                if ref.previous is not None:
                    row["previous_id"] = ref.previous.id
                rows.append(row)
            for (ref, _), row_id in zip(ready, self._insert_returning_ids(session, rx_table, rows), strict=True):
                ref.id = row_id
            waiting = [(ref, row) for ref, row in waiting if ref.id is None]
        row_ids = sorted({ref.id for ref, _ in plan if ref.id is not None})
        audited: dict[tuple[int, str], int] = {}
        for start in range(0, len(row_ids), 500):
            for audit_id, row_id, rulebook in session.execute(
                select(ar_table.c.id, ar_table.c.prescription_row_id, ar_table.c.rulebook).where(
                    ar_table.c.prescription_row_id.in_(row_ids[start : start + 500])
                )
            ):
                audited[(row_id, rulebook)] = audit_id
        kinds: list[str] = []
        fresh: list[tuple[PreparedRecord, _RxRef]] = []
        seen: set[tuple[int, str]] = set()
        for record, (ref, kind) in zip(records, plan, strict=True):
            assert ref.id is not None
            audit_key = (ref.id, record.result["rulebook"])
            if audit_key in audited or audit_key in seen:
                kinds.append("repeat")
                continue
            seen.add(audit_key)
            fresh.append((record, ref))
            kinds.append("stored" if kind == "existing" else kind)
        if fresh:
            rows = [
                {
                    "prescription_row_id": ref.id,
                    "prescription_id": record.key[0],
                    "version": ref.version,
                    "audited_at": now,
                    **record.result,
                }
                for record, ref in fresh
            ]
            inserted = self._insert_returning_ids(session, ar_table, rows)
            for (record, ref), audit_id in zip(fresh, inserted, strict=True):
                audited[(ref.id, record.result["rulebook"])] = audit_id  # type: ignore[index]
        flagged = [(record, ref) for record, ref in fresh if record.result["flagged"]]
        if flagged:
            latest_items = self._latest_items(session, {record.key[0] for record, ref in flagged if ref.previous})
            rows = []
            for record, ref in flagged:
                rx = record.prescription
                severity = record.result["severity"]
                categories = sorted({category for _, category, _ in record.findings})
                rules = sorted({rule for rule, _, _ in record.findings})
                previous_item = record.extra.get("previous_item_id")
                if previous_item is None and ref.previous is not None:
                    previous_item = latest_items.get(rx["prescription_id"])
                rows.append(
                    {
                        "prescription_id": rx["prescription_id"],
                        "version": ref.version,
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
                        "previous_item_id": previous_item,
                        "priority": 0,
                        "prescription_row_id": ref.id,
                        "audit_result_id": audited[(ref.id, record.result["rulebook"])],  # type: ignore[index]
                        "ready": 1,
                        "requeue_status": "pending",
                    }
                )
            inserted = self._insert_returning_ids(session, _items, rows)
            finding_rows = []
            trail_rows = []
            for (record, ref), item_id in zip(flagged, inserted, strict=True):
                for rule, category, severity in sorted(set(record.findings)):
                    finding_rows.append({"item_id": item_id, "rule": rule, "category": category, "severity": severity})
                trail_rows.append(
                    {
                        "item_id": item_id,
                        "prescription_id": record.key[0],
                        "version": ref.version,
                        "actor": actor,
                        "action": "submitted",
                        "from_status": None,
                        "to_status": "pending",
                        "reason": f"审核标记 flagged: {record.result['severity']}"
                        + (f" (新版本 new version v{ref.version})" if ref.previous is not None else ""),
                        "at": now,
                        "reason_code": None,
                    }
                )
            if finding_rows:
                session.execute(insert(ItemFindingRow.__table__), finding_rows)  # type: ignore[attr-defined]
            self._append(session, _trail, trail_rows)
        # Every record's item (new or existing), looked up by key.
        found: dict[tuple[str, int, str], int] = {}
        wanted_ids = sorted({r.key[0] for r in records if r.result["flagged"]})
        for start in range(0, len(wanted_ids), 500):
            for item_id, pid, version, rulebook in session.execute(
                select(_items.c.id, _items.c.prescription_id, _items.c.version, _items.c.rulebook).where(
                    _items.c.prescription_id.in_(wanted_ids[start : start + 500])
                )
            ):
                found[(pid, version, rulebook)] = item_id
        outcomes = []
        for record, (ref, _), kind in zip(records, plan, kinds, strict=True):
            flagged_record = bool(record.result["flagged"])
            outcomes.append(
                StoreOutcome(
                    kind=kind,  # type: ignore[arg-type]
                    prescription_id=record.key[0],
                    version=ref.version,
                    flagged=flagged_record,
                    item_id=found.get((record.key[0], ref.version, record.result["rulebook"]))
                    if flagged_record
                    else None,
                )
            )
        return outcomes

    def _latest_items(self, session: Session, prescription_ids: set[str]) -> dict[str, int]:
        if not prescription_ids:
            return {}
        rows = session.execute(
            select(_items.c.prescription_id, func.max(_items.c.id))
            .where(_items.c.prescription_id.in_(sorted(prescription_ids)))
            .group_by(_items.c.prescription_id)
        )
        return {pid: int(item_id) for pid, item_id in rows}

    def _insert_returning_ids(self, session: Session, table: Any, rows: list[dict[str, Any]]) -> list[int]:
        """Insert rows, returning their ids in order. On SQLite the write lock is ours (BEGIN
        IMMEDIATE), so ids are allocated here and the rows go in with one executemany — SQLite
        cannot order a multi-row RETURNING, which would make SQLAlchemy insert row by row."""
        if not rows:
            return []
        if self.is_sqlite:
            start = int(session.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one())
            ids = list(range(start + 1, start + 1 + len(rows)))
            session.execute(insert(table), [{**row, "id": row_id} for row, row_id in zip(rows, ids, strict=True)])
            return ids
        inserted = session.execute(insert(table).returning(table.c.id, sort_by_parameter_order=True), rows).all()
        return [row_id for (row_id,) in inserted]

    @_db_operation
    def stored_keys(self, keys: Iterable[tuple[str, int]], rulebook: str) -> set[tuple[str, int]]:
        """Which (prescription id, version) of ``keys`` already have an audit by ``rulebook``."""
        keys = [(clean_text(pid), version) for pid, version in keys]
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

    @_db_operation
    def replayed(self, source: str, rulebook: str, records: Iterable[tuple[str, str, int]]) -> set[int]:
        """Of ``(prescription id, content hash, line)`` of a batch, the lines a previous run of the same
        batch (``source``) already stored and audited with ``rulebook`` — what a resumed replay skips."""
        records = [(clean_text(pid), digest, line) for pid, digest, line in records]
        ids = sorted({pid for pid, _, _ in records})
        lines = sorted({line for _, _, line in records})
        rx = PrescriptionRow.__table__  # type: ignore[attr-defined]
        ar = AuditResultRow.__table__  # type: ignore[attr-defined]
        joined = rx.join(ar, ar.c.prescription_row_id == rx.c.id)
        by_line: set[tuple[int, str | None]] = set()
        legacy: set[tuple[str, str | None]] = set()
        with self._read() as session:
            # By line and content: the id as stored is the engine's normalised one, not the raw text's.
            for start in range(0, len(lines), 500):
                for line, digest in session.execute(
                    select(rx.c.source_line, rx.c.content_hash)
                    .select_from(joined)
                    .where(
                        rx.c.source == source,
                        rx.c.source_line.in_(lines[start : start + 500]),
                        ar.c.rulebook == rulebook,
                    )
                ):
                    by_line.add((line, digest))
            # A row without a line was stored before lines were kept: skip on id and content.
            for start in range(0, len(ids), 500):
                for pid, digest in session.execute(
                    select(rx.c.prescription_id, rx.c.content_hash)
                    .select_from(joined)
                    .where(
                        rx.c.source == source,
                        rx.c.source_line.is_(None),
                        rx.c.prescription_id.in_(ids[start : start + 500]),
                        ar.c.rulebook == rulebook,
                    )
                ):
                    legacy.add((pid, digest))
        return {line for pid, digest, line in records if (line, digest) in by_line or (pid, digest) in legacy}

    @_db_operation
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
                    clean_text(
                        {
                            "source": source,
                            "line": line,
                            "record_id": None if error.id is None else str(error.id),
                            "field": error.field,
                            "error": str(error.error),
                            "at": now,
                        }
                    )
                )
            if rows:
                session.execute(insert(table), rows)
            return len(rows)

    @_db_operation
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
            new_versions = session.execute(
                select(func.count()).select_from(rx).where(rx.c.source == source, rx.c.previous_id.is_not(None))
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
                "new_versions": int(new_versions),
                "error_samples": error_samples,
                "by_severity": grouped(_items.c.severity),
                "by_category": by_finding(fi.c.category),
                "by_rule": by_finding(fi.c.rule),
                "by_facility": grouped(_items.c.facility_id),
                "by_prescriber": grouped(_items.c.prescriber_id),
                "by_day": dict(sorted(grouped(_items.c.day, top=400).items())),
            }

    # --- claiming ------------------------------------------------------------------------------

    @_db_operation
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
        scope: Sequence[str] | None = None,
    ) -> ReviewItem | None:
        """Claim the ready item that is escalated first, most severe, then oldest; None when none is left.

        ``facilities`` limits the claim to the facilities the pharmacist serves (county hub routing),
        within ``scope`` (the facilities the caller may see; None: all).
        Leases that have expired are released first (logged), so a crashed session never blocks.
        """
        pharmacist_id = clean_text(pharmacist_id)  # as stored: NUL escaped
        conditions = [
            _items.c.ready == 1,
            *self._filters(
                facility=facilities, severity=severity, category=category, department=department, scope=scope
            ),
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

    @_db_operation
    def claim(
        self,
        item_id: int,
        pharmacist_id: str,
        lease_seconds: float = 600,
        *,
        now: datetime | None = None,
        scope: Sequence[str] | None = None,
    ) -> ReviewItem:
        """Claim one item: ready, or claimed with an expired lease, or yours (renews the lease)."""
        pharmacist_id = clean_text(pharmacist_id)
        moment = _utc(now)
        try:
            with self._write() as session:
                row = self._item_row(session, item_id, scope)
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

    @_db_operation
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
        scope: Sequence[str] | None,
    ) -> ReviewItem:
        # An empty code on a critical item is a ReasonRequiredError, not an unknown code: look it up later.
        reason = self._reason(kind, reason_code) if reason_code and reason_code.strip() else None
        comment = clean_text(comment or "")
        pharmacist_id = clean_text(pharmacist_id)
        moment = _utc(now)
        try:
            with self._write() as session:
                row = self._item_row(session, item_id, scope)
                if row.status != "claimed" or row.claimed_by != pharmacist_id:
                    raise StateError(
                        f"审方任务 {item_id} 状态为 {row.status}（领取人 {row.claimed_by}），{pharmacist_id} 不能决定 "
                        "(claim the item first)"
                    )
                if kind == "approve" and row.severity == "critical" and not (reason_code.strip() and comment.strip()):
                    raise ReasonRequiredError(
                        f"审方任务 {item_id} 含拦截级(critical)问题：审核通过必须选择原因代码并填写说明 "
                        "(passing a critical finding needs a reason code and a comment)"
                    )
                if reason is None:
                    reason = self._reason(kind, reason_code)
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
                self._decision(
                    session,
                    row,
                    actor=pharmacist_id,
                    role="pharmacist",
                    action=kind,
                    reason_code=reason_code,
                    comment=comment,
                    at=moment,
                )
                return self._public(row)
        except _LostRace:
            raise StateError(f"审方任务 {item_id} 刚被他人更改 (changed concurrently)") from None

    def _decision(self, session: Session, row: ReviewItemRow, **values: Any) -> None:
        self._append(
            session,
            _decisions,
            [{"item_id": row.id, "prescription_id": row.prescription_id, "version": row.version, **values}],
        )

    @_db_operation
    def approve(
        self,
        item_id: int,
        pharmacist_id: str,
        reason_code: str,
        comment: str = "",
        *,
        now: datetime | None = None,
        scope: Sequence[str] | None = None,
    ) -> ReviewItem:
        """Pass a claimed item (审核通过) with a coded reason (``reasons("approve")``) and free text.

        An item with a ``critical`` finding needs both a reason code and a non-empty comment, else
        :class:`ReasonRequiredError`; both are kept in the decision and the trail.
        """
        return self._decide(
            item_id, pharmacist_id, reason_code, comment, kind="approve", to_status="approved", now=now, scope=scope
        )

    @_db_operation
    def return_to_doctor(
        self,
        item_id: int,
        pharmacist_id: str,
        reason_code: str,
        comment: str = "",
        *,
        now: datetime | None = None,
        scope: Sequence[str] | None = None,
    ) -> ReviewItem:
        """Return a claimed item to the doctor (退回医生) with a coded reason (``reasons("return")``)."""
        return self._decide(
            item_id, pharmacist_id, reason_code, comment, kind="return", to_status="returned", now=now, scope=scope
        )

    @_db_operation
    def double_sign(
        self,
        prescription_id: str,
        doctor_id: str,
        reason: str,
        *,
        now: datetime | None = None,
        scope: Sequence[str] | None = None,
    ) -> ReviewItem:
        """The doctor insists (双签) with a reason: the returned item goes back in line as ``double_signed``."""
        if not reason or not reason.strip():
            raise QueueError("双签必须注明理由 (a double signature needs a reason)")
        reason, doctor_id = clean_text(reason), clean_text(doctor_id)
        moment = _utc(now)
        try:
            with self._write() as session:
                stmt = select(ReviewItemRow).where(ReviewItemRow.prescription_id == prescription_id)
                if scope is not None:
                    stmt = stmt.where(_items.c.facility_id.in_(_scope(scope)))
                row = session.exec(
                    stmt.order_by(ReviewItemRow.version.desc(), ReviewItemRow.id.desc())  # type: ignore[union-attr]
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
                self._decision(
                    session,
                    row,
                    actor=doctor_id,
                    role="doctor",
                    action="double_sign",
                    reason_code=None,
                    comment=reason,
                    at=moment,
                )
                return self._public(row)
        except _LostRace:
            raise StateError(f"处方 {prescription_id} 刚被他人更改 (changed concurrently)") from None

    @_db_operation
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
                        self._decision(
                            session,
                            row,
                            actor="system",
                            role="system",
                            action="timeout_pass",
                            reason_code="TIMEOUT",
                            comment=base,
                            at=moment,
                        )
                    acted += 1
                except _LostRace:
                    continue
        return acted

    # --- reading -------------------------------------------------------------------------------

    @_db_operation
    def get(self, item_id: int, *, scope: Sequence[str] | None = None) -> ReviewDetail:
        """The item with its prescription payload, audit findings, versions, decisions and trail.

        With ``scope``, versions, decisions and trail of the same prescription id at a facility
        outside it are left out (two facilities may share one numbering)."""
        with self._read() as session:
            row = self._item_row(session, item_id, scope)
            rx = session.get(PrescriptionRow, row.prescription_row_id)
            audit = session.get(AuditResultRow, row.audit_result_id)
            assert rx is not None and audit is not None
            versions = []
            rx_stmt = select(PrescriptionRow).where(PrescriptionRow.prescription_id == row.prescription_id)
            item_stmt = select(ReviewItemRow).where(ReviewItemRow.prescription_id == row.prescription_id)
            if scope is not None:
                rx_stmt = rx_stmt.where(PrescriptionRow.__table__.c.facility_id.in_(_scope(scope)))  # type: ignore[attr-defined]
                item_stmt = item_stmt.where(_items.c.facility_id.in_(_scope(scope)))
            rx_rows = session.exec(rx_stmt.order_by(PrescriptionRow.version)).all()  # type: ignore[arg-type]
            item_rows = session.exec(item_stmt.order_by(ReviewItemRow.id)).all()  # type: ignore[arg-type]
            items_by_version = {(r.version): r for r in item_rows}
            visible_items = [r.id for r in item_rows]
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
            decision_stmt = select(DecisionRow).where(DecisionRow.prescription_id == row.prescription_id)
            trail_stmt = select(TrailRow).where(TrailRow.prescription_id == row.prescription_id)
            if scope is not None:
                decision_stmt = decision_stmt.where(_decisions.c.item_id.in_(visible_items))
                trail_stmt = trail_stmt.where(_trail.c.item_id.in_(visible_items))
            decisions = session.exec(decision_stmt.order_by(DecisionRow.id)).all()  # type: ignore[arg-type]
            trail = session.exec(trail_stmt.order_by(TrailRow.id)).all()  # type: ignore[arg-type]
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

    @_db_operation
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
        scope: Sequence[str] | None = None,
    ) -> list[ReviewItem]:
        """One page of items. Order: queue order (escalated, most severe, oldest) when every asked
        status is a ready one, else newest first; ``order`` overrides. Only items within ``scope``."""
        conditions = self._filters(
            status=status, facility=facility, severity=severity, category=category, department=department, scope=scope
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

    @_db_operation
    def count(
        self,
        status: str | Sequence[str] | None = None,
        facility: str | Sequence[str] | None = None,
        severity: str | Sequence[str] | None = None,
        category: str | Sequence[str] | None = None,
        department: str | Sequence[str] | None = None,
        *,
        scope: Sequence[str] | None = None,
    ) -> int:
        conditions = self._filters(
            status=status, facility=facility, severity=severity, category=category, department=department, scope=scope
        )
        with self._read() as session:
            return int(session.execute(select(func.count()).select_from(_items).where(*conditions)).scalar_one())

    @_db_operation
    def oldest_pending_age_seconds(
        self, now: datetime | None = None, *, scope: Sequence[str] | None = None
    ) -> float | None:
        """Seconds the longest-waiting ready item has waited (since queued), or None when none waits."""
        conditions = [_items.c.ready == 1, *self._filters(scope=scope)]
        with self._read() as session:
            oldest = session.execute(select(func.min(_items.c.queued_at)).where(*conditions)).scalar_one()
        if oldest is None:
            return None
        return max((_utc(now) - oldest).total_seconds(), 0.0)

    @_db_operation
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
        *,
        scope: Sequence[str] | None = None,
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
        if scope is not None:
            conditions.append(rx.c.facility_id.in_(_scope(scope)))
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

    @_db_operation
    def statistics(
        self,
        date_from: date | datetime | str | None = None,
        date_to: date | datetime | str | None = None,
        *,
        scope: Sequence[str] | None = None,
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

        item_period = [*period(_items.c.day), *self._filters(scope=scope)]
        audit_period = period(rx.c.day)
        if scope is not None:
            audit_period.append(rx.c.facility_id.in_(_scope(scope)))
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
                .where(*audit_period)
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


def _scope(scope: Sequence[str]) -> list[str]:
    if isinstance(scope, str):  # a lone facility id, not its characters
        return [scope]
    return list(scope)


def _like_escape(value: str) -> str:
    """A filter value matches literally: LIKE's wildcards and the escape character are escaped."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


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
