"""Statistics for the pharmacy committee — one definition of every rate, used by
``ReviewQueue.statistics`` (the CLI's ``queue stats`` and the UI's statistics page) and by
``ReviewQueue.batch_summary`` (the replay summary and its HTML report).

Rates carry their numerator and denominator (:class:`Rate`):

* **held** — flagged audits / all audits (处方拦截率): how much the engine stops;
* **pass after review** — approved / decided (approved + returned) items;
* **returned** — returned / decided items;
* **time to decision** — from submission to the pharmacist's decision, of decided items;
* **override** (per rule) — of the decided items a rule fired on, how many the pharmacist passed anyway.

Each is given overall and per day, facility, prescriber, severity, category and rule
(:class:`GroupStatistics`). Audits are counted by the prescription's issue day, facility and
prescriber; category and rule are known of flagged items only, so their groups have no held rate.
"""

from __future__ import annotations

import statistics as pystats
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, PrivateAttr, computed_field
from sqlalchemy import ColumnElement, FromClause, Integer, case, cast, func, select, tuple_
from sqlmodel import Session

from rx_audit.queue.common import READY_STATUSES, as_day, scope_list, utc
from rx_audit.queue.database import db_operation
from rx_audit.queue.filters import item_filters
from rx_audit.queue.store import QueueStore
from rx_audit.queue.tables import AUDITS, DECISIONS, FINDINGS, ITEMS, PRESCRIPTIONS, REPLAY_ERRORS

Dimension = Literal["day", "facility", "prescriber", "severity", "category", "rule"]
NONE_KEY = "(none)"
DECIDED_STATUSES = ("approved", "returned")


class Rate(BaseModel):
    """A rate with what it is made of; ``value`` is None when nothing was counted."""

    numerator: int = 0
    denominator: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def value(self) -> float | None:
        return round(self.numerator / self.denominator, 4) if self.denominator else None


class DecisionTime(BaseModel):
    """Seconds from submission to decision, of the decided items."""

    count: int = 0
    mean: float | None = None
    median: float | None = None
    p90: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, values: Sequence[float]) -> DecisionTime:
        if not values:
            return cls()
        ordered = sorted(values)
        return cls(
            count=len(ordered),
            mean=round(pystats.fmean(ordered), 1),
            median=round(pystats.median(ordered), 1),
            p90=round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1),
            max=round(ordered[-1], 1),
        )


class GroupStatistics(BaseModel):
    """The figures of one day, facility, prescriber, severity, category or rule."""

    key: str
    prescriptions: int | None = None  # audits (None: not known of unflagged audits — category, rule)
    flagged: int | None = None
    items: int = 0  # review items (flagged audits that reached the queue)
    decided: int = 0
    approved: int = 0
    returned: int = 0
    held_rate: Rate | None = None
    pass_after_review_rate: Rate = Rate()
    returned_rate: Rate = Rate()
    time_to_decision_seconds: DecisionTime = DecisionTime()


class RuleOverride(BaseModel):
    """How often pharmacists pass an item a rule fired on: rules they dismiss are candidates to fix."""

    rule: str
    fired: int
    decided: int
    approved: int
    returned: int
    override_rate: Rate


class PharmacistStatistics(BaseModel):
    """One pharmacist's work over the period: decisions, how long from claim to decision, and how
    often a flagged prescription was passed anyway (overrides; of them, those with a 拦截 finding)."""

    pharmacist: str
    decisions: int = 0
    approved: int = 0
    returned: int = 0
    overrides: Rate = Rate()  # approved / decisions
    critical_passed: int = 0  # approvals of items with a critical finding
    review_seconds: DecisionTime = DecisionTime()  # from the (last) claim to the decision


class QueueStatistics(BaseModel):
    """What :meth:`ReviewQueue.statistics` returns: totals, rates, and the same per dimension.

    ``total`` counts review items (CONTRACT: with ``pending`` — every ready status —, ``approved``
    and ``returned``); ``prescriptions`` counts audits. For older callers the model also reads like
    the dict it once was (``stats["held_rate"]`` is the rate's value, ``stats["by_facility"]`` the
    items per facility): :meth:`to_dict`.
    """

    date_from: str | None = None
    date_to: str | None = None
    prescriptions: int = 0
    flagged: int = 0
    total: int = 0
    pending: int = 0
    claimed: int = 0
    approved: int = 0
    returned: int = 0
    auto_passed: int = 0
    escalated: int = 0
    double_signed: int = 0
    decided: int = 0
    held_rate: Rate = Rate()
    pass_after_review_rate: Rate = Rate()
    returned_rate: Rate = Rate()
    time_to_decision_seconds: DecisionTime = DecisionTime()
    oldest_pending_age_seconds: float | None = None
    by_status: dict[str, int] = {}
    by_day: list[GroupStatistics] = []
    by_facility: list[GroupStatistics] = []
    by_prescriber: list[GroupStatistics] = []
    by_severity: list[GroupStatistics] = []
    by_category: list[GroupStatistics] = []
    by_rule: list[GroupStatistics] = []
    rule_override: list[RuleOverride] = []
    by_pharmacist: list[PharmacistStatistics] = []
    # 干预成功率: of the prescriptions returned to the doctor, those the doctor changed (a new version
    # followed); ``returns_insisted`` the doctor double-signed instead, the rest await an answer.
    intervention_rate: Rate = Rate()
    returns_insisted: int = 0
    first_day: str | None = None  # the issue days with audits within the scope (any period)
    last_day: str | None = None
    _flat: dict[str, Any] | None = PrivateAttr(default=None)

    def to_dict(self) -> dict[str, Any]:
        """The flat view: rates as their values, ``by_*`` as items per key (groups with items only)."""
        if self._flat is None:
            data = self.model_dump(mode="json")
            for name in ("held_rate", "pass_after_review_rate", "returned_rate"):
                data[name] = data[name]["value"]
            for name in ("by_day", "by_facility", "by_prescriber", "by_severity", "by_category", "by_rule"):
                data[name] = {group["key"]: group["items"] for group in data[name] if group["items"]}
            for row in data["rule_override"]:
                row["override_rate"] = row["override_rate"]["value"]
            self._flat = data
        return self._flat

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def keys(self) -> list[str]:
        return list(self.to_dict())


# --- the queries: one statistics question is a set of audit conditions and item conditions ---------


@dataclass(frozen=True)
class _Question:
    audits: list[Any]  # conditions on rx_prescription / rx_audit_result
    items: list[Any]  # conditions on rx_review_item


@dataclass(frozen=True)
class _Axis:
    audit_key: Any | None  # the audit column of the dimension (None: not known of audits)
    item_key: Any
    by_finding: bool = False  # the item column is on rx_item_finding


_AXES: dict[Dimension, _Axis] = {
    "day": _Axis(PRESCRIPTIONS.c.day, ITEMS.c.day),
    "facility": _Axis(PRESCRIPTIONS.c.facility_id, ITEMS.c.facility_id),
    "prescriber": _Axis(PRESCRIPTIONS.c.prescriber_id, ITEMS.c.prescriber_id),
    "severity": _Axis(AUDITS.c.severity, ITEMS.c.severity),
    "category": _Axis(None, FINDINGS.c.category, by_finding=True),
    "rule": _Axis(None, FINDINGS.c.rule, by_finding=True),
}
_AUDITED: FromClause = AUDITS.join(PRESCRIPTIONS, AUDITS.c.prescription_row_id == PRESCRIPTIONS.c.id)
_ITEM_FINDINGS: FromClause = FINDINGS.join(ITEMS, FINDINGS.c.item_id == ITEMS.c.id)


def _key(value: Any) -> str:
    return NONE_KEY if value is None else str(value)


def _held(session: Session, question: _Question) -> Rate:
    flagged_sum = func.coalesce(func.sum(cast(AUDITS.c.flagged, Integer)), 0)
    total, flagged = session.execute(
        select(func.count(), flagged_sum).select_from(_AUDITED).where(*question.audits)
    ).one()
    return Rate(numerator=int(flagged), denominator=int(total))


def _audit_counts(session: Session, column: Any, question: _Question) -> dict[str, tuple[int, int]]:
    stmt = (
        select(column, func.count(), func.coalesce(func.sum(cast(AUDITS.c.flagged, Integer)), 0))
        .select_from(_AUDITED)
        .where(*question.audits)
        .group_by(column)
    )
    return {_key(key): (int(total), int(flagged)) for key, total, flagged in session.execute(stmt)}


def _keyed_items(axis: _Axis, question: _Question, *extra: ColumnElement[bool]) -> Any:
    """Distinct (key, item, status, submitted, decided) rows: an item counts once per key."""
    source = _ITEM_FINDINGS if axis.by_finding else ITEMS
    return (
        select(
            axis.item_key.label("key"),
            ITEMS.c.id.label("item_id"),
            ITEMS.c.status.label("status"),
            ITEMS.c.submitted_at.label("submitted_at"),
            ITEMS.c.decided_at.label("decided_at"),
        )
        .select_from(source)
        .where(*question.items, *extra)
        .distinct()
        .subquery()
    )


def _item_counts(session: Session, axis: _Axis, question: _Question) -> dict[str, tuple[int, int, int]]:
    keyed = _keyed_items(axis, question)
    stmt = select(
        keyed.c.key,
        func.count(),
        func.sum(case((keyed.c.status == "approved", 1), else_=0)),
        func.sum(case((keyed.c.status == "returned", 1), else_=0)),
    ).group_by(keyed.c.key)
    return {
        _key(key): (int(items), int(approved or 0), int(returned or 0))
        for key, items, approved, returned in session.execute(stmt)
    }


def _decision_times(session: Session, axis: _Axis, question: _Question) -> dict[str, list[float]]:
    keyed = _keyed_items(axis, question, ITEMS.c.status.in_(DECIDED_STATUSES), ITEMS.c.decided_at.is_not(None))
    times: dict[str, list[float]] = defaultdict(list)
    for key, submitted_at, decided_at in session.execute(select(keyed.c.key, keyed.c.submitted_at, keyed.c.decided_at)):
        times[_key(key)].append((utc(decided_at) - utc(submitted_at)).total_seconds())
    return times


def _group(
    key: str, audits: tuple[int, int] | None, items: tuple[int, int, int], times: list[float]
) -> GroupStatistics:
    count, approved, returned = items
    decided = approved + returned
    return GroupStatistics(
        key=key,
        prescriptions=audits[0] if audits else None,
        flagged=audits[1] if audits else None,
        items=count,
        decided=decided,
        approved=approved,
        returned=returned,
        held_rate=Rate(numerator=audits[1], denominator=audits[0]) if audits else None,
        pass_after_review_rate=Rate(numerator=approved, denominator=decided),
        returned_rate=Rate(numerator=returned, denominator=decided),
        time_to_decision_seconds=DecisionTime.of(times),
    )


def _ranked(groups: list[GroupStatistics], dimension: Dimension, top: int | None) -> list[GroupStatistics]:
    """Days in order, else the largest first (``top`` of them)."""
    if dimension == "day":
        return sorted(groups, key=lambda g: g.key)
    groups.sort(key=lambda g: (-(g.prescriptions or 0), -g.items, g.key))
    return groups[:top] if top else groups


def _groups(
    session: Session, dimension: Dimension, question: _Question, top: int | None = None
) -> list[GroupStatistics]:
    """The figures per value of ``dimension``: days in order, else the largest first (``top`` of them)."""
    axis = _AXES[dimension]
    audits = _audit_counts(session, axis.audit_key, question) if axis.audit_key is not None else {}
    items = _item_counts(session, axis, question)
    times = _decision_times(session, axis, question)
    groups = [
        _group(key, audits.get(key, (0, 0)) if axis.audit_key is not None else None, items.get(key, (0, 0, 0)),
               times.get(key, []))
        for key in audits.keys() | items.keys()
    ]  # fmt: skip
    return _ranked(groups, dimension, top)


# --- every dimension at once (the statistics page): one audit scan, one item fetch --------------------
#
# Per dimension, the queries above scan the period's audits and items once each: 4 audit scans and
# 13 item queries for one page of figures (2.2 s for 30 days of 1,000,000 audits on PostgreSQL).
# Here the audits are counted in one scan (GROUPING SETS on PostgreSQL) and the items and their
# findings fetched once, then counted per dimension in Python — the same figures.

_AUDIT_DIMENSIONS: tuple[Dimension, ...] = ("day", "facility", "prescriber", "severity")


@dataclass
class _Figures:
    held: Rate
    audits: dict[str, dict[str, tuple[int, int]]]  # dimension -> key -> (audits, flagged)
    items: dict[str, dict[str, list[int]]]  # dimension -> key -> [items, approved, returned]
    times: dict[str, dict[str, list[float]]]  # dimension -> key -> seconds to decision
    overall_times: list[float]


def _audit_rollup(session: Session, question: _Question) -> tuple[Rate, dict[str, dict[str, tuple[int, int]]]]:
    columns: list[Any] = [_AXES[d].audit_key for d in _AUDIT_DIMENSIONS]
    if session.get_bind().dialect.name != "postgresql":  # SQLite has no GROUPING SETS
        held = _held(session, question)
        return held, {d: _audit_counts(session, _AXES[d].audit_key, question) for d in _AUDIT_DIMENSIONS}
    flagged_sum = func.coalesce(func.sum(cast(AUDITS.c.flagged, Integer)), 0)
    stmt = (
        select(*columns, *[func.grouping(c) for c in columns], func.count(), flagged_sum)
        .select_from(_AUDITED)
        .where(*question.audits)
        .group_by(func.grouping_sets(*[tuple_(c) for c in columns], tuple_()))
    )
    out: dict[str, dict[str, tuple[int, int]]] = {d: {} for d in _AUDIT_DIMENSIONS}
    held = Rate()
    width = len(columns)
    for row in session.execute(stmt):
        values, grouped, (total, flagged) = row[:width], row[width : 2 * width], row[2 * width :]
        open_ = [i for i, g in enumerate(grouped) if not g]
        if not open_:
            held = Rate(numerator=int(flagged), denominator=int(total))
        else:
            out[_AUDIT_DIMENSIONS[open_[0]]][_key(values[open_[0]])] = (int(total), int(flagged))
    return held, out


def _item_figures(session: Session, question: _Question) -> tuple[dict[str, Any], dict[str, Any], list[float]]:
    """Items and decision times per key of every dimension, from one fetch of the items and one of
    their findings (an item counts once per key, as in :func:`_keyed_items`)."""
    items: dict[str, dict[str, list[int]]] = {d: defaultdict(lambda: [0, 0, 0]) for d in _AXES}
    times: dict[str, dict[str, list[float]]] = {d: defaultdict(list) for d in _AXES}
    overall: list[float] = []
    per_item: dict[int, tuple[str, float | None]] = {}

    def count(dimension: str, key: str, status: str, seconds: float | None) -> None:
        cell = items[dimension][key]
        cell[0] += 1
        cell[1] += status == "approved"
        cell[2] += status == "returned"
        if seconds is not None:
            times[dimension][key].append(seconds)

    stmt = select(
        ITEMS.c.id, ITEMS.c.day, ITEMS.c.facility_id, ITEMS.c.prescriber_id, ITEMS.c.severity,
        ITEMS.c.status, ITEMS.c.submitted_at, ITEMS.c.decided_at,
    ).where(*question.items)  # fmt: skip
    for item_id, day, facility, prescriber, severity, status, submitted, decided in session.execute(stmt):
        seconds = (
            (utc(decided) - utc(submitted)).total_seconds()
            if status in DECIDED_STATUSES and decided is not None
            else None
        )
        per_item[item_id] = (status, seconds)
        if seconds is not None:
            overall.append(seconds)
        for dimension, value in (("day", day), ("facility", facility), ("prescriber", prescriber),
                                 ("severity", severity)):  # fmt: skip
            count(dimension, _key(value), status, seconds)
    seen: set[tuple[int, str, str]] = set()
    finding_stmt = (
        select(FINDINGS.c.item_id, FINDINGS.c.category, FINDINGS.c.rule).select_from(_ITEM_FINDINGS)
        .where(*question.items)
    )  # fmt: skip
    for item_id, category, rule in session.execute(finding_stmt):
        status, seconds = per_item.get(item_id, ("", None))
        for dimension, value in (("category", category), ("rule", rule)):
            if (item_id, dimension, value) not in seen:
                seen.add((item_id, dimension, value))
                count(dimension, _key(value), status, seconds)
    return items, times, overall


def _figures(session: Session, question: _Question) -> _Figures:
    held, audits = _audit_rollup(session, question)
    items, times, overall = _item_figures(session, question)
    return _Figures(held=held, audits=audits, items=items, times=times, overall_times=overall)


def _groups_of(figures: _Figures, dimension: Dimension, top: int | None = None) -> list[GroupStatistics]:
    """:func:`_groups` from figures computed once."""
    known = dimension in figures.audits
    audits = figures.audits.get(dimension, {})
    items = figures.items[dimension]
    times = figures.times[dimension]
    groups = [
        _group(key, audits.get(key, (0, 0)) if known else None, tuple(items.get(key, (0, 0, 0))),  # type: ignore[arg-type]
               times.get(key, []))
        for key in audits.keys() | items.keys()
    ]  # fmt: skip
    return _ranked(groups, dimension, top)


def _period(column: Any, day_from: str | None, day_to: str | None) -> list[Any]:
    out = []
    if day_from:
        out.append(column >= day_from)
    if day_to:
        out.append(column <= day_to)
    return out


def _status_counts(session: Session, question: _Question) -> dict[str, int]:
    stmt = select(ITEMS.c.status, func.count()).where(*question.items).group_by(ITEMS.c.status)
    return dict(sorted(((str(status), int(n)) for status, n in session.execute(stmt)), key=lambda kv: -kv[1]))


def _count(session: Session, *conditions: Any) -> int:
    return int(session.execute(select(func.count()).select_from(ITEMS).where(*conditions)).scalar_one())


def _overrides(by_rule: list[GroupStatistics]) -> list[RuleOverride]:
    return [
        RuleOverride(
            rule=group.key,
            fired=group.items,
            decided=group.decided,
            approved=group.approved,
            returned=group.returned,
            override_rate=group.pass_after_review_rate,
        )
        for group in sorted(by_rule, key=lambda g: -g.items)
    ]


def _pharmacists(session: Session, question: _Question) -> list[PharmacistStatistics]:
    """Per pharmacist, of the items they decided (the last decision of each item)."""
    stmt = select(
        ITEMS.c.decided_by, ITEMS.c.status, ITEMS.c.severity, ITEMS.c.claimed_at, ITEMS.c.decided_at
    ).where(*question.items, ITEMS.c.status.in_(DECIDED_STATUSES), ITEMS.c.decided_by.is_not(None))
    rows: dict[str, list[Any]] = defaultdict(list)
    for row in session.execute(stmt):
        rows[str(row[0])].append(row)
    out = []
    for pharmacist, decided in rows.items():
        approved = sum(1 for r in decided if r[1] == "approved")
        out.append(
            PharmacistStatistics(
                pharmacist=pharmacist,
                decisions=len(decided),
                approved=approved,
                returned=len(decided) - approved,
                overrides=Rate(numerator=approved, denominator=len(decided)),
                critical_passed=sum(1 for r in decided if r[1] == "approved" and r[2] == "critical"),
                review_seconds=DecisionTime.of(
                    [(utc(r[4]) - utc(r[3])).total_seconds() for r in decided if r[3] is not None and r[4] is not None]
                ),
            )
        )
    return sorted(out, key=lambda p: (-p.decisions, p.pharmacist))


def _interventions(session: Session, question: _Question) -> tuple[Rate, int]:
    """干预成功率: returned items whose prescription got a newer version / all returned items; and the
    returns the doctor double-signed instead."""
    returned = (
        select(ITEMS.c.id, ITEMS.c.prescription_id, ITEMS.c.version, ITEMS.c.double_sign_reason)
        .where(*question.items, ITEMS.c.id.in_(select(DECISIONS.c.item_id).where(DECISIONS.c.action == "return")))
        .subquery()
    )
    newer = (
        select(PRESCRIPTIONS.c.id)
        .where(
            PRESCRIPTIONS.c.prescription_id == returned.c.prescription_id,
            PRESCRIPTIONS.c.version > returned.c.version,
        )
        .exists()
    )
    total, changed, insisted = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((newer, 1), else_=0)), 0),
            func.coalesce(func.sum(case((returned.c.double_sign_reason.is_not(None), 1), else_=0)), 0),
        ).select_from(returned)
    ).one()
    return Rate(numerator=int(changed), denominator=int(total)), int(insisted)


def _data_days(session: Session, scope: Sequence[str] | None) -> tuple[str | None, str | None]:
    conditions = [PRESCRIPTIONS.c.facility_id.in_(scope_list(scope))] if scope is not None else []
    first, last = session.execute(
        select(func.min(PRESCRIPTIONS.c.day), func.max(PRESCRIPTIONS.c.day)).where(*conditions)
    ).one()
    return first, last


def queue_statistics(
    session: Session, day_from: str | None, day_to: str | None, scope: Sequence[str] | None
) -> QueueStatistics:
    """The figures over issue days [day_from, day_to] within ``scope`` (None: every facility)."""
    audits = _period(PRESCRIPTIONS.c.day, day_from, day_to)
    if scope is not None:
        audits.append(PRESCRIPTIONS.c.facility_id.in_(scope_list(scope)))
    question = _Question(audits, [*_period(ITEMS.c.day, day_from, day_to), *item_filters(scope=scope)])
    figures = _figures(session, question)
    held = figures.held
    by_status = _status_counts(session, question)
    approved, returned = by_status.get("approved", 0), by_status.get("returned", 0)
    decided = approved + returned
    by_rule = _groups_of(figures, "rule")
    interventions, insisted = _interventions(session, question)
    first_day, last_day = _data_days(session, scope)
    return QueueStatistics(
        date_from=day_from,
        date_to=day_to,
        prescriptions=held.denominator,
        flagged=held.numerator,
        total=sum(by_status.values()),
        pending=sum(by_status.get(s, 0) for s in READY_STATUSES),
        claimed=by_status.get("claimed", 0),
        approved=approved,
        returned=returned,
        auto_passed=by_status.get("auto_passed", 0),
        escalated=by_status.get("escalated", 0),
        double_signed=_count(session, *question.items, ITEMS.c.double_sign_reason.is_not(None)),
        decided=decided,
        held_rate=held,
        pass_after_review_rate=Rate(numerator=approved, denominator=decided),
        returned_rate=Rate(numerator=returned, denominator=decided),
        time_to_decision_seconds=DecisionTime.of(figures.overall_times),
        by_status=by_status,
        by_day=_groups_of(figures, "day"),
        by_facility=_groups_of(figures, "facility"),
        by_prescriber=_groups_of(figures, "prescriber", top=200),
        by_severity=_groups_of(figures, "severity"),
        by_category=_groups_of(figures, "category"),
        by_rule=by_rule,
        rule_override=_overrides(by_rule),
        by_pharmacist=_pharmacists(session, question),
        intervention_rate=interventions,
        returns_insisted=insisted,
        first_day=first_day,
        last_day=last_day,
    )


def _counts(groups: list[GroupStatistics], top: int = 50) -> dict[str, int]:
    """Items per key, the largest first (the batch summary's distributions)."""
    ranked = sorted((g for g in groups if g.items), key=lambda g: -g.items)[:top]
    return {g.key: g.items for g in ranked}


def _error_samples(session: Session, source: str) -> tuple[int, list[dict[str, Any]]]:
    errors = REPLAY_ERRORS
    count = session.execute(select(func.count()).select_from(errors).where(errors.c.source == source)).scalar_one()
    samples = [
        {"line": line, "id": record_id, "field": field_name, "error": error}
        for line, record_id, field_name, error in session.execute(
            select(errors.c.line, errors.c.record_id, errors.c.field, errors.c.error)
            .where(errors.c.source == source)
            .order_by(errors.c.line)
            .limit(50)
        )
    ]
    return int(count), samples


def batch_summary(session: Session, source: str, rulebook: str | None) -> dict[str, Any]:
    """What a batch holds (see :meth:`Statistics.batch_summary`)."""
    audits = [PRESCRIPTIONS.c.source == source]
    items = [ITEMS.c.source == source]
    if rulebook:
        audits.append(AUDITS.c.rulebook == rulebook)
        items.append(ITEMS.c.rulebook == rulebook)
    question = _Question(audits, items)
    held = _held(session, question)
    error_count, samples = _error_samples(session, source)
    new_versions = session.execute(
        select(func.count())
        .select_from(PRESCRIPTIONS)
        .where(PRESCRIPTIONS.c.source == source, PRESCRIPTIONS.c.previous_id.is_not(None))
    ).scalar_one()
    return {
        "source": source,
        "rulebook": rulebook,
        "total": held.denominator,
        "flagged": held.numerator,
        "flagged_share": held.value,
        "held_rate": held.model_dump(),
        "errors": error_count,
        "new_versions": int(new_versions),
        "error_samples": samples,
        "by_severity": _counts(_groups(session, "severity", question)),
        "by_category": _counts(_groups(session, "category", question)),
        "by_rule": _counts(_groups(session, "rule", question)),
        "by_facility": _counts(_groups(session, "facility", question)),
        "by_prescriber": _counts(_groups(session, "prescriber", question)),
        "by_day": {g.key: g.items for g in _groups(session, "day", question) if g.items},
    }


class Statistics(QueueStore):
    """statistics, batch_summary."""

    @db_operation
    def statistics(
        self,
        date_from: date | datetime | str | None = None,
        date_to: date | datetime | str | None = None,
        *,
        scope: Sequence[str] | None = None,
    ) -> QueueStatistics:
        """Figures for the pharmacy committee over issue dates [date_from, date_to] (inclusive), within
        ``scope``: held, pass-after-review and returned rates, time to decision — overall and by day,
        facility, prescriber, severity, category and rule — and the per-rule override rate."""
        with self._read() as session:
            stats = queue_statistics(session, as_day(date_from), as_day(date_to), scope)
            oldest = session.execute(
                select(func.min(ITEMS.c.queued_at)).where(ITEMS.c.ready == 1, *item_filters(scope=scope))
            ).scalar_one()
        if oldest is not None:
            stats.oldest_pending_age_seconds = max((utc(None) - utc(oldest)).total_seconds(), 0.0)
        return stats

    @db_operation
    def data_days(self, *, scope: Sequence[str] | None = None) -> tuple[str | None, str | None]:
        """The first and last issue day (``YYYY-MM-DD``) with audits within ``scope``: where a
        statistics view opens, so that old data never reads as zeros."""
        with self._read() as session:
            return _data_days(session, scope)

    @db_operation
    def batch_summary(self, source: str, rulebook: str | None = None) -> dict[str, Any]:
        """What a batch (``source``) holds: totals, flagged share (the held rate), counts by
        severity/category/rule/facility/prescriber/day, and its unreadable records — the whole
        batch, across resumed runs."""
        with self._read() as session:
            return batch_summary(session, source, rulebook)
