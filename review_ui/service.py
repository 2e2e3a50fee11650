"""The one door from the pages to the review queue: every read and action carries the signed-in
user's facility scope.

A pharmacist limited to facility LZH could open facility BBB's prescription (patient id, eGFR,
diagnoses, findings) through 检索 Search because each page called ``ReviewQueue`` itself and one
forgot the facility filter. Pages now get a :class:`ReviewService` from ``backend.service()`` and
never see the queue: the scope is set once, from the user, and passed as ``scope=`` on every call
(the queue then treats an item outside it exactly like a missing one, ``NotFoundError``). The
service also re-checks what comes back (defence in depth: a queue bug must not leak a record).

Scope: admins, and pharmacists without a ``facilities`` list in the users file, are unrestricted
(``None``); a pharmacist with ``facilities = [...]`` sees those facilities only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING, Any, Literal

import streamlit as st

from review_ui.auth import User
from rx_audit import NotFoundError

if TYPE_CHECKING:
    from rx_audit import QueueStatistics, Reason, ReviewDetail, ReviewItem, ReviewQueue, SearchHit


def scope_for(user: User) -> tuple[str, ...] | None:
    """The facilities ``user`` may see; ``None`` = every facility (admins, unrestricted pharmacists)."""
    if user.is_admin or not user.facilities:
        return None
    return tuple(user.facilities)


class ReviewService:
    """The queue as one signed-in user may use it. Decisions are always signed with ``user.id``."""

    def __init__(self, queue: ReviewQueue, user: User, cache_key: str = "") -> None:
        self._queue = queue
        self._cache_key = cache_key  # the database URL: cached figures are per database *and* scope
        self.user = user
        self.scope: tuple[str, ...] | None = scope_for(user)

    # --- scope ------------------------------------------------------------------------------

    @property
    def _scope_arg(self) -> list[str] | None:
        return list(self.scope) if self.scope is not None else None

    def in_scope(self, facility_id: str | None) -> bool:
        return self.scope is None or (facility_id is not None and facility_id in self.scope)

    def _checked(self, item: ReviewItem) -> ReviewItem:
        if not self.in_scope(item.facility_id):
            raise NotFoundError(f"审方任务 {item.id} 不存在 (no such item)")
        return item

    def facilities_filter(self, wanted: Sequence[str] | None) -> list[str] | None:
        """A facility filter narrowed to the scope (the scope itself is passed separately too)."""
        chosen = [f for f in (wanted or []) if f]
        if self.scope is None:
            return chosen or None
        return [f for f in chosen if f in self.scope] or list(self.scope)

    # --- reads ------------------------------------------------------------------------------

    def get(self, item_id: int) -> ReviewDetail:
        detail = self._queue.get(int(item_id), scope=self._scope_arg)
        self._checked(detail.item)
        return detail

    def list_items(self, **filters: Any) -> list[ReviewItem]:
        items = self._queue.list_items(**filters, scope=self._scope_arg)
        return [i for i in items if self.in_scope(i.facility_id)]

    def count(self, **filters: Any) -> int:
        return int(self._queue.count(**filters, scope=self._scope_arg))

    def oldest_pending_age_seconds(self) -> float | None:
        return self._queue.oldest_pending_age_seconds(scope=self._scope_arg)

    def search(self, **query: Any) -> list[SearchHit]:
        hits = self._queue.search(**query, scope=self._scope_arg)
        return [h for h in hits if self.in_scope(h.facility_id)]

    def statistics(self, date_from: date | None, date_to: date | None) -> QueueStatistics:
        # Cached for a minute, keyed by the scope too: an admin's figures must never be served to a
        # pharmacist of one facility from the shared cache.
        return _cached_statistics(self._queue, self._cache_key, self.scope, date_from, date_to)

    def prescription_payloads(
        self, date_from: date | None, date_to: date | None, limit: int = 200_000
    ) -> list[tuple[str | None, str | None, dict[str, Any]]]:
        rows = self._queue.prescription_payloads(date_from, date_to, limit=limit, scope=self._scope_arg)
        return [row for row in rows if self.in_scope(row[0])]

    def data_days(self) -> tuple[str | None, str | None]:
        """First and last issue day with data in this user's scope (cached for a minute, per scope)."""
        return _cached_data_days(self._queue, self._cache_key, self.scope)

    def reasons(self, kind: Literal["approve", "return"]) -> list[Reason]:
        return self._queue.reasons(kind)

    def prescription(self, prescription_id: str, version: int | None = None) -> Any:
        """Any stored version of a prescription (flagged or not) with its versions and decisions
        (``AuditedPrescription``; not re-exported by ``rx_audit``, hence ``Any`` here)."""
        record = self._queue.prescription(prescription_id, version, scope=self._scope_arg)
        facility = record.prescription.get("facility")
        if not self.in_scope(facility.get("id") if isinstance(facility, dict) else None):
            raise NotFoundError(f"处方 {prescription_id} 不存在 (no such prescription)")
        return record

    def patient_history(self, patient_id: str, limit: int = 20) -> list[SearchHit]:
        """The patient's audited prescriptions, flagged or not, newest first (within the scope)."""
        return self.search(patient_id=patient_id, limit=limit, offset=0)

    def claimed_by_me(self) -> list[ReviewItem]:
        return self.list_items(status="claimed", claimed_by=self.user.id)

    # --- actions (always as this user) ------------------------------------------------------

    def claim_next(self, *, lease_seconds: float = 600, **filters: Any) -> ReviewItem | None:
        item = self._queue.claim_next(self.user.id, lease_seconds=lease_seconds, **filters, scope=self._scope_arg)
        return self._checked(item) if item is not None else None

    def claim(self, item_id: int, lease_seconds: float = 600) -> ReviewItem:
        return self._checked(self._queue.claim(int(item_id), self.user.id, lease_seconds, scope=self._scope_arg))

    def renew_lease(self, item_id: int, lease_seconds: float = 600) -> ReviewItem:
        return self._queue.renew_lease(int(item_id), self.user.id, lease_seconds, scope=self._scope_arg)

    def give_back(self, item_id: int, note: str = "") -> ReviewItem:
        return self._queue.release(int(item_id), self.user.id, action="give_back", note=note, scope=self._scope_arg)

    def skip(self, item_id: int, note: str = "") -> ReviewItem:
        return self._queue.release(int(item_id), self.user.id, action="skip", note=note, scope=self._scope_arg)

    def approve(self, item_id: int, reason_code: str, comment: str = "") -> ReviewItem:
        return self._queue.approve(int(item_id), self.user.id, reason_code, comment, scope=self._scope_arg)

    def return_to_doctor(self, item_id: int, reason_code: str, comment: str = "") -> ReviewItem:
        return self._queue.return_to_doctor(int(item_id), self.user.id, reason_code, comment, scope=self._scope_arg)


# Leading underscore: not hashed by st.cache_data; the key is (database URL, scope, arguments).
@st.cache_data(ttl=60, show_spinner="统计中 computing…")
def _cached_statistics(
    _queue: ReviewQueue, cache_key: str, scope: tuple[str, ...] | None, date_from: date | None, date_to: date | None
) -> QueueStatistics:
    return _queue.statistics(date_from=date_from, date_to=date_to, scope=list(scope) if scope is not None else None)


@st.cache_data(ttl=60, show_spinner=False)
def _cached_data_days(
    _queue: ReviewQueue, cache_key: str, scope: tuple[str, ...] | None
) -> tuple[str | None, str | None]:
    return _queue.data_days(scope=list(scope) if scope is not None else None)
