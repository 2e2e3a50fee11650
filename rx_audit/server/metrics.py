"""Prometheus metrics of one app (its own registry, so several apps in one process never clash).

* ``rx_audit_audits_total{outcome}``: audits answered — ``not_flagged``, ``queued``, ``new_version``,
  ``repeat``, ``invalid`` (a prescription refused as unreadable)
* ``rx_audit_request_seconds{route}``: latency histogram of the API's routes
* ``rx_audit_requests_in_flight``: API requests being answered (long polls included)
* ``rx_audit_rulebook_reloads_total{outcome}``: hot reloads of the rulebook — ``reloaded``, ``failed``
  (the rule files had errors; the live version stayed)
* ``rx_audit_queue_depth``: review items waiting for a pharmacist (pending, double-signed, escalated),
  read from the database at each scrape (shared by every worker and instance)

With several uvicorn workers (``rx-audit serve --workers N``) the workers write their values to
``$PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode; ``serve`` makes a fresh
directory when none is set) and any worker answers a scrape with the sum over all of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _QueueDepth(Collector):
    def __init__(self, depth: Callable[[], int | None]):
        self.depth = depth

    def collect(self) -> Iterator[GaugeMetricFamily]:
        value = self.depth()
        if value is not None:
            yield GaugeMetricFamily("rx_audit_queue_depth", "review items waiting for a pharmacist", value=value)


class Metrics:
    def __init__(self, queue_depth: Callable[[], int | None]):
        self.registry = CollectorRegistry()
        self.audits = Counter("rx_audit_audits", "audits answered, by outcome", ["outcome"], registry=self.registry)
        self.latency = Histogram(
            "rx_audit_request_seconds", "API request latency", ["route"], buckets=BUCKETS, registry=self.registry
        )
        self.in_flight = Gauge("rx_audit_requests_in_flight", "API requests being answered", registry=self.registry,
                               multiprocess_mode="livesum")  # fmt: skip
        self.reloads = Counter("rx_audit_rulebook_reloads", "rulebook reloads, by outcome", ["outcome"],
                               registry=self.registry)  # fmt: skip
        self.queue_depth = _QueueDepth(queue_depth)
        self.registry.register(self.queue_depth)

    def render(self) -> bytes:
        shared = os.environ.get(MULTIPROC_ENV)
        if not shared:
            return generate_latest(self.registry)
        registry = CollectorRegistry()  # every worker's values, summed
        multiprocess.MultiProcessCollector(registry, path=shared)
        registry.register(self.queue_depth)
        return generate_latest(registry)

    @staticmethod
    def worker_stopped() -> None:
        """A worker leaves: its live gauges (in flight) no longer count."""
        if os.environ.get(MULTIPROC_ENV):
            multiprocess.mark_process_dead(os.getpid())
