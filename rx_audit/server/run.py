"""Running the service under uvicorn: the settings are checked in this process first (rulebook, keys
file, database at the schema this code needs), then passed to uvicorn's workers through the
environment; each worker builds its app with :func:`rx_audit.server.app.app_from_env`.

Several workers (``--workers``) and several instances share the queue database: a SQLite file for
one machine, PostgreSQL behind a load balancer. On SIGTERM uvicorn stops accepting, finishes the
requests it accepted — at least as long as the longest long poll (``max_wait_seconds``) — then
closes the queue. On SIGHUP every worker reloads the rulebook (:mod:`rx_audit.server.reload`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.supervisors.multiprocess import Multiprocess

from rx_audit import Auditor, ReviewQueue
from rx_audit.server.app import configure_logging
from rx_audit.server.auth import KeyRing
from rx_audit.server.metrics import MULTIPROC_ENV
from rx_audit.server.reload import SUPERVISOR_ENV
from rx_audit.server.settings import ENV_VARS, Settings

APP = "rx_audit.server.app:app_from_env"


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    graceful_seconds: int = 30
    proxy_headers: bool = False
    forwarded_allow_ips: str | None = None


def check(settings: Settings) -> str:
    """Everything a worker would fail on, checked once: raises with one line; returns the rulebook hash."""
    KeyRing.load(settings.keys_file)
    auditor = Auditor.from_path(settings.rules)
    try:
        queue = ReviewQueue(settings.db_url)
        try:
            queue.count(status="pending")
        finally:
            queue.close()
        return auditor.rulebook_hash
    finally:
        auditor.close()


def environment(settings: Settings) -> dict[str, str]:
    """The settings as the environment the workers read."""
    values = {
        "rules": str(settings.rules),
        "db_url": settings.db_url,
        "keys_file": str(settings.keys_file),
        "max_body_bytes": str(settings.max_body_bytes),
        "rate_per_minute": str(settings.rate_per_minute),
        "max_wait_seconds": str(settings.max_wait_seconds),
        "audit_threads": str(settings.audit_threads),
    }
    if settings.rate_burst is not None:
        values["rate_burst"] = str(settings.rate_burst)
    if settings.cds_audience:
        values["cds_audience"] = ",".join(settings.cds_audience)
    if settings.cds_issuers:
        values["cds_issuers"] = json.dumps([issuer.as_dict() for issuer in settings.cds_issuers])
    if settings.webhook_allow:
        values["webhook_allow"] = ",".join(settings.webhook_allow)
    return {ENV_VARS[name]: value for name, value in values.items()}


def graceful_seconds(settings: Settings, listen: Listen) -> int:
    """Long enough for the longest accepted request — a long poll of ``max_wait_seconds`` — to finish."""
    return max(listen.graceful_seconds, math.ceil(settings.max_wait_seconds) + 5)


def serve(settings: Settings, listen: Listen) -> None:
    os.environ.update(environment(settings))
    made = None
    if listen.workers > 1 and not os.environ.get(MULTIPROC_ENV):  # metrics summed over the workers
        made = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="rx-audit-metrics-")
    try:
        _run(settings, listen)
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)


def _run(settings: Settings, listen: Listen) -> None:
    configure_logging()
    options: dict[str, Any] = dict(
        factory=True,
        host=listen.host,
        port=listen.port,
        workers=listen.workers,
        timeout_graceful_shutdown=graceful_seconds(settings, listen),
        proxy_headers=listen.proxy_headers,
        forwarded_allow_ips=listen.forwarded_allow_ips,
        access_log=False,  # ours is the JSON access log (no query strings, no bodies)
        server_header=False,
        log_level="info",
    )
    if listen.workers == 1:  # the worker is this process: SIGHUP reaches its handler directly
        uvicorn.run(APP, **options)
        return
    config = uvicorn.Config(APP, **options)
    os.environ[SUPERVISOR_ENV] = str(os.getpid())  # the workers' admin reload signals us
    sock = config.bind_socket()
    try:
        _Supervisor(config, sockets=[sock]).run()
    finally:
        sock.close()


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, but SIGHUP is a rulebook reload in every worker (uvicorn's own replaces
    the workers: seconds of rulebook compiling each, and a broken rulebook would be found only then)."""

    def handle_hup(self) -> None:
        for process in self.processes:
            if process.pid is not None and process.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGHUP)
