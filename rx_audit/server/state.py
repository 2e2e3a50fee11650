"""The state of a prescription as an HIS sees it (``GET /v1/prescriptions/{id}``): the latest version
within the caller's facilities, its review status and the decision on it.

``status``: ``not_flagged`` (no review needed), or the review item's status — ``pending``,
``claimed``, ``approved``, ``returned``, ``double_signed``, ``auto_passed``, ``escalated``.
``release`` is true when the HIS may release the prescription for payment and dispensing
(``not_flagged``, ``approved``, ``auto_passed``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rx_audit import NotFoundError, ReviewQueue

RELEASED = frozenset({"not_flagged", "approved", "auto_passed"})


def prescription_state(queue: ReviewQueue, prescription_id: str, scope: Sequence[str]) -> dict[str, Any]:
    """The state of the latest audited version of ``prescription_id`` within ``scope``; NotFoundError
    when there is none (another facility's prescription is exactly as absent)."""
    hits = queue.search(prescription_id=prescription_id, scope=list(scope), limit=1)
    if not hits:
        raise NotFoundError(prescription_id)
    hit = hits[0]
    state: dict[str, Any] = {
        "id": hit.prescription_id,
        "version": hit.version,
        "facility": hit.facility_id,
        "flagged": hit.flagged,
        "severity": hit.severity,
        "rulebook": hit.rulebook,
        "status": "not_flagged",
        "item": None,
        "decision": None,
    }
    if hit.item_id is not None:
        detail = queue.get(hit.item_id, scope=list(scope))
        item = detail.item
        state.update(status=item.status, item=str(item.id))
        state["decision"] = _decision(detail, queue)
    state["release"] = state["status"] in RELEASED
    return state


def _decision(detail: Any, queue: ReviewQueue) -> dict[str, Any] | None:
    """The last decision on the item (a pharmacist's, the doctor's double signature or a timeout)."""
    item = detail.item
    decisions = [d for d in detail.decisions if d.item_id == item.id]
    if not decisions:
        return None
    last = decisions[-1]
    labels = {reason.code: reason.label for kind in ("approve", "return") for reason in queue.reasons(kind)}
    return {
        "action": last.action,
        "by": last.actor,
        "role": last.role,
        "reason_code": last.reason_code,
        "reason": labels.get(last.reason_code) if last.reason_code else None,
        "note": last.comment or None,
        "at": last.at.isoformat(),
    }


def fingerprint(state: dict[str, Any]) -> tuple[Any, ...]:
    """What a long poll waits to change."""
    decision = state.get("decision") or {}
    return state["version"], state["status"], state["item"], decision.get("at")
