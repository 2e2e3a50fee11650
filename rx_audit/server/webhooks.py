"""The webhook deliverer of ``rx-audit serve``: a thread that claims due events from the queue
database (:meth:`ReviewQueue.claim_webhook_events`: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the
write lock on SQLite, so several workers and instances never take the same event at once) and POSTs
each to its facility's URL with httpx, with a timeout.

Each POST carries the event's stored body (the same every attempt, so a repeat has the same
``event_id``) and the headers::

    X-Rx-Audit-Event-Id: evt_…
    X-Rx-Audit-Timestamp: 1764606000                 (unix seconds of this attempt)
    X-Rx-Audit-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>

A 2xx answer is delivered; anything else (another status, a timeout, a refused connection) is retried
after ``base_delay · 2^(attempts-1)`` seconds (capped at ``max_delay``) until ``max_attempts``, then
``failed``. At least once: an HIS drops repeats by ``event_id``. The secret is never logged.

``RX_AUDIT_WEBHOOKS=0`` turns the thread off (tests drive :meth:`Deliverer.run_once` with their clock).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx

from rx_audit import ReviewQueue

log = logging.getLogger("rx_audit.server")
SIGNATURE_HEADER = "X-Rx-Audit-Signature"
TIMESTAMP_HEADER = "X-Rx-Audit-Timestamp"
EVENT_HEADER = "X-Rx-Audit-Event-Id"


def allowed(url: str, allow: tuple[str, ...] | list[str]) -> bool:
    """Whether ``url``'s host is on the allow-list: a name (``his.lzh.local``), a wildcard for its
    subdomains (``*.county.cn``) or an address. An empty list allows any host."""
    if not allow:
        return True
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    for pattern in allow:
        pattern = pattern.lower().strip().rstrip(".")
        if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:]) and host != pattern[2:]):
            return True
    return False


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """``v1=`` + hex HMAC-SHA256 of ``f"{timestamp}.{body}"`` with the facility's secret."""
    message = str(timestamp).encode("ascii") + b"." + body
    return "v1=" + hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _utcnow() -> datetime:
    from rx_audit.queue.common import utcnow

    return utcnow()


@dataclass
class Deliverer:
    """Delivers webhook events of ``queue``. ``clock`` and ``transport`` are injectable (tests)."""

    queue: ReviewQueue
    timeout: float = 10.0
    max_attempts: int = 8
    base_delay: float = 10.0
    max_delay: float = 3600.0
    lease_seconds: float = 60.0
    batch: int = 20
    poll_seconds: float = 1.0
    clock: Callable[[], datetime] = _utcnow
    transport: httpx.BaseTransport | None = None
    allow: tuple[str, ...] = ()  # webhook_allow: checked again at each delivery (the list may have shrunk)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    def delay(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones."""
        return float(min(self.max_delay, self.base_delay * 2 ** max(0, attempts - 1)))

    def run_once(self) -> int:
        """Claim the due events and try each once; the number delivered."""
        now = self.clock()
        events = self.queue.claim_webhook_events(now=now, limit=self.batch, lease_seconds=self.lease_seconds)
        if not events:
            return 0
        delivered = 0
        with httpx.Client(timeout=self.timeout, transport=self.transport, follow_redirects=False) as client:
            for event in events:
                delivered += self._deliver(client, event)
        return delivered

    def _deliver(self, client: httpx.Client, event: dict[str, Any]) -> int:
        now = self.clock()
        error = self._post(client, event, now)
        if error is None:
            self.queue.finish_webhook_event(event["event_id"], delivered=True, now=now)
            return 1
        attempts = int(event["attempts"])
        retry_at = now + timedelta(seconds=self.delay(attempts)) if attempts < self.max_attempts else None
        self.queue.finish_webhook_event(event["event_id"], delivered=False, error=error, retry_at=retry_at, now=now)
        log.info("webhook %s attempt %d failed: %s", event["event_id"], attempts, error)
        return 0

    def _post(self, client: httpx.Client, event: dict[str, Any], now: datetime) -> str | None:
        """None when the receiver took it (2xx), else why not (no secret, no internals of the receiver)."""
        if not event.get("url") or not event.get("secret"):
            return "no webhook registered for the facility"
        if not allowed(event["url"], self.allow):
            return "the webhook's host is not in the allow-list (webhook_allow)"
        body = event["body"].encode("utf-8")
        timestamp = int(now.timestamp())
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: event["event_id"],
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(event["secret"], timestamp, body),
        }
        try:
            response = client.post(event["url"], content=body, headers=headers)
        except httpx.HTTPError as failure:
            return f"{type(failure).__name__}: {str(failure)[:200]}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

    # --- the thread of the service ----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="rx-audit-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once() > 0
            except Exception as failure:  # the database away for a moment: try again on the next tick
                log.warning("webhook delivery: %s", type(failure).__name__)
                busy = False
            if not busy:
                self._stop.wait(self.poll_seconds)


def enabled() -> bool:
    return os.environ.get("RX_AUDIT_WEBHOOKS", "1").strip().lower() not in ("0", "false", "no", "off")
