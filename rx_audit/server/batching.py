"""Group commit: the submissions of requests waiting at the same moment stored in one transaction.

Storing a prescription is about nine statements and a commit (1.6 ms on SQLite, several times the
audit), and SQLite takes one writer at a time: one transaction per request left the service at
100–250 audits/s with the workers mostly waiting for the write lock (benchmarks/README.md, "HTTP
service"). Here one writer thread per worker stores whatever has arrived while the previous
transaction ran — one record when the service is quiet (no added wait), dozens under load — with
:meth:`rx_audit.ReviewQueue.submit_many`, which keeps one bad record from failing the others.

A request is answered only after its transaction committed, so an answered submission is stored
(the kill -9 test holds); a failure of the database is every waiting request's error.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future
from typing import Any

from rx_audit import AuditResult, Prescription, ReviewQueue, Submission

logger = logging.getLogger("rx_audit.server")


class SubmitBatcher:
    """One writer thread storing the submissions that wait, up to ``limit`` a transaction."""

    def __init__(self, queue: ReviewQueue, *, source: str = "his", limit: int = 64):
        self._queue = queue
        self._source = source
        self._limit = limit
        self._waiting: list[tuple[Any, AuditResult, Prescription | None, Future[Submission]]] = []
        self._ready = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    async def submit(self, record: Any, result: AuditResult, parsed: Prescription | None = None) -> Submission:
        """Store one audited prescription with whatever else is waiting; the event loop is not held.
        ``parsed``: the prescription as the audit validated it (saves validating it again)."""
        return await asyncio.wrap_future(self.submit_future(record, result, parsed))

    def submit_future(self, record: Any, result: AuditResult, parsed: Prescription | None = None
                      ) -> Future[Submission]:
        future: Future[Submission] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the service is stopping")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rx-audit-store", daemon=True)
                self._thread.start()
            self._waiting.append((record, result, parsed, future))
            self._ready.notify()
        return future

    def close(self) -> None:
        """Store what is waiting, then stop (graceful shutdown loses no accepted request)."""
        with self._ready:
            self._closed = True
            self._ready.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._waiting and not self._closed:
                    self._ready.wait()
                if not self._waiting:
                    return
                batch, self._waiting = self._waiting[: self._limit], self._waiting[self._limit :]
            self._store(batch)

    def _store(self, batch: list[tuple[Any, AuditResult, Prescription | None, Future[Submission]]]) -> None:
        try:
            outcomes = self._queue.submit_many([(record, result) for record, result, _, _ in batch],
                                               source=self._source, parsed=[parsed for _, _, parsed, _ in batch])
        except BaseException as error:  # the database failed: every waiting request says so
            logger.warning("storing %d submissions failed: %s", len(batch), type(error).__name__)
            for *_, future in batch:
                future.set_exception(error)
            return
        for (*_, future), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
