"""Rates per day / facility / prescriber for the statistics page.

``ReviewQueue.statistics()`` gives overall rates and *counts* per dimension; the pharmacy
director also wants the *rates* per dimension (held, passed after review, returned, time to
decision). Until the queue offers that (e.g. ``statistics(group_by=...)``), this thin helper runs
read-only grouped queries over the queue's public table models, on its own engine, for any
SQLAlchemy URL (SQLite or PostgreSQL). It never writes.
"""

from __future__ import annotations

import statistics as pystats
from collections.abc import Sequence
from datetime import date
from typing import Any

import pandas as pd
from sqlalchemy import Integer, case, cast, create_engine, func, select
from sqlalchemy.engine import Engine

from rx_audit.queue import AuditResultRow, PrescriptionRow, ReviewItemRow

DIMENSIONS = {"day": "day", "facility": "facility_id", "prescriber": "prescriber_id"}


def read_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"check_same_thread": False})
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)


def grouped_rates(
    engine: Engine,
    dimension: str,
    date_from: date | None,
    date_to: date | None,
    limit: int = 200,
    *,
    scope: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per value of ``dimension``: audits, held rate, decided, pass/return rates, median minutes.

    ``scope``: only these facilities (the signed-in pharmacist's); ``None`` = all. An empty scope
    matches nothing rather than everything."""
    column = DIMENSIONS[dimension]
    rx = PrescriptionRow.__table__  # type: ignore[attr-defined]
    ar = AuditResultRow.__table__  # type: ignore[attr-defined]
    items = ReviewItemRow.__table__  # type: ignore[attr-defined]
    day_from = date_from.isoformat() if date_from else None
    day_to = date_to.isoformat() if date_to else None

    def period(col: Any, facility: Any) -> list[Any]:
        out = []
        if day_from:
            out.append(col >= day_from)
        if day_to:
            out.append(col <= day_to)
        if scope is not None:
            out.append(facility.in_(list(scope)))
        return out

    audits_stmt = (
        select(
            rx.c[column].label("key"), func.count().label("audits"), func.sum(cast(ar.c.flagged, Integer)).label("held")
        )
        .select_from(ar.join(rx, ar.c.prescription_row_id == rx.c.id))
        .where(*period(rx.c.day, rx.c.facility_id))
        .group_by(rx.c[column])
        .order_by(func.count().desc())
        .limit(limit)
    )
    items_stmt = (
        select(
            items.c[column].label("key"),
            func.count().label("items"),
            func.sum(case((items.c.status == "approved", 1), else_=0)).label("approved"),
            func.sum(case((items.c.status == "returned", 1), else_=0)).label("returned"),
        )
        .where(*period(items.c.day, items.c.facility_id))
        .group_by(items.c[column])
    )
    durations_stmt = select(items.c[column], items.c.submitted_at, items.c.decided_at).where(
        *period(items.c.day, items.c.facility_id),
        items.c.status.in_(("approved", "returned")),
        items.c.decided_at.is_not(None),
    )
    with engine.connect() as connection:
        audits = {row.key: (int(row.audits), int(row.held or 0)) for row in connection.execute(audits_stmt)}
        decided = {
            row.key: (int(row.items), int(row.approved or 0), int(row.returned or 0))
            for row in connection.execute(items_stmt)
        }
        minutes: dict[Any, list[float]] = {}
        for key, submitted_at, decided_at in connection.execute(durations_stmt):
            minutes.setdefault(key, []).append((decided_at - submitted_at).total_seconds() / 60)
    rows = []
    for key in audits.keys() | decided.keys():
        n_audits, held = audits.get(key, (0, 0))
        _items, approved, returned = decided.get(key, (0, 0, 0))
        n_decided = approved + returned
        rows.append(
            {
                dimension: key if key is not None else "(无 none)",
                "audits": n_audits,
                "held": held,
                "held_rate": held / n_audits if n_audits else None,
                "decided": n_decided,
                "pass_after_review_rate": approved / n_decided if n_decided else None,
                "returned_rate": returned / n_decided if n_decided else None,
                "median_minutes_to_decision": round(pystats.median(minutes[key]), 1) if minutes.get(key) else None,
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    sort = dimension if dimension == "day" else "audits"
    return frame.sort_values(sort, ascending=dimension == "day").reset_index(drop=True)
