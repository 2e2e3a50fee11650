"""What every part of the queue shares: statuses, times, canonical text (NUL escaping, content hash)
and filter helpers. No database access here."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any, Literal

Status = Literal["pending", "claimed", "approved", "returned", "double_signed", "escalated", "auto_passed"]
STATUSES: tuple[str, ...] = ("pending", "claimed", "approved", "returned", "double_signed", "escalated", "auto_passed")
READY_STATUSES: tuple[str, ...] = ("pending", "double_signed", "escalated")
FINAL_STATUSES: tuple[str, ...] = ("approved", "returned", "auto_passed")
TimeoutPolicy = Literal["hold", "escalate", "pass"]
SEVERITY_RANK: dict[str | None, int] = {None: 0, "info": 1, "warning": 2, "critical": 3}


def utcnow() -> datetime:
    return datetime.now(UTC)


def utc(value: datetime | None) -> datetime:
    """Aware UTC (sqlmodel stores aware datetimes); a naive value is taken as UTC; None is now."""
    if value is None:
        return utcnow()
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def as_day(value: date | datetime | str | None) -> str | None:
    """An issue date as stored (``YYYY-MM-DD``)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)[:10]


def clean_text(value: Any) -> Any:
    """PostgreSQL refuses NUL in text: store it as the six characters ``\\u0000`` (strings, recursively)."""
    if isinstance(value, str):
        return value.replace("\x00", "\\u0000") if "\x00" in value else value
    if isinstance(value, dict):
        return {clean_text(k): clean_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_text(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def content_hash(payload: Any) -> str:
    """What makes two submissions of one prescription id "the same": sha256 of the canonical JSON
    (keys sorted, NUL escaped as stored), so key order and whitespace do not make a new version."""
    return hashlib.sha256(canonical_json(clean_text(payload)).encode("utf-8")).hexdigest()


def scope_list(scope: Sequence[str]) -> list[str]:
    if isinstance(scope, str):  # a lone facility id, not its characters
        return [scope]
    return list(scope)


def values_of(value: str | Sequence[str]) -> list[str]:
    """A filter value: one string or several."""
    return [value] if isinstance(value, str) else list(value)


def like_escape(value: str) -> str:
    """A filter value matches literally: LIKE's wildcards and the escape character are escaped."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class LostRace(Exception):
    """A conditional UPDATE matched no row: another writer changed the item first."""
