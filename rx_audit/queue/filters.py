"""The WHERE conditions of item reads and claims: filters by value (one or several), within a scope."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import or_

from rx_audit.queue.common import like_escape, scope_list, values_of
from rx_audit.queue.tables import ITEMS

Filter = str | Sequence[str] | None


def item_filters(
    *,
    status: Filter = None,
    facility: Filter = None,
    severity: Filter = None,
    category: Filter = None,
    department: Filter = None,
    claimed_by: Filter = None,
    scope: Sequence[str] | None = None,
) -> list[Any]:
    """Conditions on ``rx_review_item``; None means any. ``scope``: the facilities the caller may see."""
    conditions: list[Any] = []
    if scope is not None:
        conditions.append(ITEMS.c.facility_id.in_(scope_list(scope)))
    for column, value in (
        (ITEMS.c.status, status),
        (ITEMS.c.facility_id, facility),
        (ITEMS.c.severity, severity),
        (ITEMS.c.department, department),
        (ITEMS.c.claimed_by, claimed_by),
    ):
        if value is not None:
            conditions.append(column.in_(values_of(value)))
    if category is not None:
        conditions.append(
            or_(*[ITEMS.c.categories.like(f"%,{like_escape(c)},%", escape="\\") for c in values_of(category)])
        )
    return conditions
