"""The queue's public models: what ``ReviewQueue`` returns (pydantic; the UI and an HIS see these,
never the table rows) and the records replay prepares in its workers (dataclasses, picklable)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, field_validator
from sqlmodel import Field

from rx_audit.queue.common import READY_STATUSES
from rx_audit.queue.tables import DecisionBase, ReviewItemBase, TrailBase


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


class AuditedPrescription(BaseModel):
    """One stored version of a prescription, flagged or not (:meth:`ReviewQueue.prescription`): its
    payload, its latest audit, the review item when it was flagged, and every version of its id —
    what a pharmacist reads of a patient's earlier prescriptions and of a resubmission."""

    prescription_id: str
    version: int
    received_at: datetime
    prescription: dict[str, Any]
    result: dict[str, Any] | None = None  # contract shape: flagged, severity, rulebook, findings
    item: ReviewItem | None = None
    versions: list[VersionInfo] = []
    decisions: list[Decision] = []


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
