"""The pharmacist review queue (药师终审队列): flagged prescriptions wait for a pharmacist's decision.

Storage is sqlmodel on any SQLAlchemy URL; the default is a SQLite file (WAL), PostgreSQL works
the same (``postgresql+psycopg://…``). The package, one module per idea:

* :mod:`.tables`     the tables (``rx_prescription``, ``rx_audit_result``, ``rx_review_item``,
                     ``rx_item_finding``, ``rx_decision``, ``rx_audit_trail``, ``rx_chain_head``,
                     ``rx_replay_error``) and their indexes
* :mod:`.schemas`    the public models (ReviewItem, ReviewDetail, Decision, TrailEntry, SearchHit,
                     Reason, Submission, VerifyResult, PreparedRecord, StoreOutcome)
* :mod:`.database`   URLs, engines, retries of transient failures, one-line errors, read-only SQLite
* :mod:`.migrate`    Alembic migrations (run by ``rx-audit queue migrate``, never on open)
* :mod:`.store`      the queue's engines and sessions, the schema check on open
* :mod:`.chain`      the hash-chained trail and decisions, ``verify``
* :mod:`.prepare`    a prescription and its audit as rows to store (pure; replay workers use it)
* :mod:`.storing`    storing prepared records: repeats, versions, audits, items
* :mod:`.intake`     submit, submit_outcome, resubmit; replay's bookkeeping
* :mod:`.workflow`   the state machine: claim, approve, return, double-sign, leases, timeouts
* :mod:`.reads`      get, list_items, count, oldest_pending_age_seconds, search
* :mod:`.statistics` the rates (held, pass after review, returned, time to decision, override)
* :mod:`.reasons`    coded decision reasons
* :mod:`.review_queue` ``ReviewQueue``, composed of the above

Scope: every read and every action on an item id takes ``scope`` — the facility ids the caller may
see (None: unrestricted, for admins and the CLI); an item outside it is :class:`NotFoundError`,
exactly as if it did not exist.
"""

from __future__ import annotations

from rx_audit.queue.chain import CHAIN_FIELDS, GENESIS, chain_hash
from rx_audit.queue.common import (
    FINAL_STATUSES,
    READY_STATUSES,
    SEVERITY_RANK,
    STATUSES,
    Status,
    TimeoutPolicy,
    clean_text,
    content_hash,
)
from rx_audit.queue.database import DEFAULT_LOCK_TIMEOUT, mask_url
from rx_audit.queue.migrate import MIGRATIONS, SCHEMA_HEAD, VERSION_TABLE, head_revision, migrate, schema_version
from rx_audit.queue.prepare import prepare_record
from rx_audit.queue.reasons import DEFAULT_REASONS, load_reasons
from rx_audit.queue.review_queue import ReviewQueue
from rx_audit.queue.schemas import (
    AuditedPrescription,
    Decision,
    PreparedRecord,
    Reason,
    ReviewDetail,
    ReviewItem,
    SearchHit,
    StoreOutcome,
    Submission,
    TrailEntry,
    VerifyResult,
    VersionInfo,
)
from rx_audit.queue.statistics import (
    DecisionTime,
    GroupStatistics,
    PharmacistStatistics,
    QueueStatistics,
    Rate,
    RuleOverride,
)
from rx_audit.queue.tables import (
    APPEND_ONLY_TABLES,
    AuditResultRow,
    ChainHeadRow,
    DecisionRow,
    ItemFindingRow,
    PrescriptionRow,
    ReplayErrorRow,
    ReviewItemRow,
    TrailRow,
)

_head_revision = head_revision  # the name the tests and older callers use

__all__ = [
    "APPEND_ONLY_TABLES",
    "CHAIN_FIELDS",
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_REASONS",
    "FINAL_STATUSES",
    "GENESIS",
    "MIGRATIONS",
    "READY_STATUSES",
    "SCHEMA_HEAD",
    "SEVERITY_RANK",
    "STATUSES",
    "VERSION_TABLE",
    "AuditResultRow",
    "AuditedPrescription",
    "ChainHeadRow",
    "Decision",
    "DecisionRow",
    "DecisionTime",
    "GroupStatistics",
    "ItemFindingRow",
    "PharmacistStatistics",
    "PreparedRecord",
    "PrescriptionRow",
    "QueueStatistics",
    "Rate",
    "Reason",
    "ReplayErrorRow",
    "ReviewDetail",
    "ReviewItem",
    "ReviewItemRow",
    "ReviewQueue",
    "RuleOverride",
    "SearchHit",
    "Status",
    "StoreOutcome",
    "Submission",
    "TimeoutPolicy",
    "TrailEntry",
    "TrailRow",
    "VerifyResult",
    "VersionInfo",
    "chain_hash",
    "clean_text",
    "content_hash",
    "head_revision",
    "load_reasons",
    "mask_url",
    "migrate",
    "prepare_record",
    "schema_version",
]
