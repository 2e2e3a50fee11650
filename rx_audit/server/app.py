"""``create_app(settings)``: the FastAPI app of ``rx-audit serve``. The auditor is loaded once (a
rulebook load compiles every rule file), the review queue opened once (thread-safe); both are closed
when the app shuts down. ``app_from_env()`` is the factory uvicorn's workers call."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from rx_audit import Auditor, ReviewQueue, __version__
from rx_audit.server import openapi, ops, problems, reload, routes_webhooks
from rx_audit.server.auth import KeyRing, RateLimiter
from rx_audit.server.batching import SubmitBatcher
from rx_audit.server.cds_jwt import JwtVerifier
from rx_audit.server.context import Services
from rx_audit.server.metrics import Metrics
from rx_audit.server.routes_audit import router as audit_router
from rx_audit.server.routes_cds import router as cds_router
from rx_audit.server.routes_prescriptions import router as prescriptions_router
from rx_audit.server.settings import Settings


def create_app(
    settings: Settings, *, auditor: Auditor | None = None, queue: ReviewQueue | None = None
) -> FastAPI:
    """The app. ``auditor``/``queue`` may be given (tests share one auditor); else they are built from
    ``settings`` — and then closed when the app shuts down."""
    keys = KeyRing.load(settings.keys_file)
    owned_auditor = auditor is None
    owned_queue = queue is None
    auditor = auditor or Auditor.from_path(settings.rules)
    queue = queue or ReviewQueue(settings.db_url)

    def depth() -> int | None:
        try:
            return queue.count(status=["pending", "double_signed", "escalated"])
        except Exception:
            return None

    found = Services(
        settings=settings,
        auditor=auditor,
        queue=queue,
        keys=keys,
        limiter=RateLimiter(settings.rate_per_minute, settings.burst),
        metrics=Metrics(depth),
        jwt=JwtVerifier(settings.cds_issuers, settings.cds_audience),
        store=SubmitBatcher(queue),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # SIGHUP reloads the rulebook this app owns (a shared test auditor is not the app's to reload)
        undo = reload.on_sighup(found) if owned_auditor else None
        yield
        if undo is not None:
            undo()
        found.store.close()  # what is waiting is stored before the queue closes
        found.metrics.worker_stopped()
        if owned_queue:
            found.queue.close()
        if owned_auditor:
            found.auditor.close()

    app = _assemble(lifespan)
    app.state.services = found
    return app


def _assemble(lifespan: Any = None) -> FastAPI:
    """The routes, handlers and middleware (they reach the services through ``app.state`` per request)."""
    app = FastAPI(
        title="rx_audit",
        version=__version__,
        description="处方前置审核 — the HTTP service of CONTRACT §4",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    problems.install(app)
    ops.install(app)
    app.include_router(audit_router)
    app.include_router(prescriptions_router)
    routes_webhooks.install(app)  # PUT /v1/webhooks, GET /v1/webhooks/events; the deliverer thread
    app.include_router(cds_router)  # CDS Hooks 2.0: discovery, order-sign, feedback
    app.include_router(ops.router)
    app.include_router(reload.router)  # POST /v1/admin/reload (admin keys)
    openapi.install(app)  # the published schema: bodies, answers, problems, bearer auth
    return app


def openapi_document() -> dict[str, Any]:
    """The published OpenAPI schema, without a rulebook, a database or keys (for docs and tests)."""
    return _assemble().openapi()


def configure_logging() -> None:
    """Access log lines as they are (JSON), everything else of the service one line each, on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("rx_audit.server.access", "rx_audit.server"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def app_from_env() -> FastAPI:
    """uvicorn's factory (``rx_audit.server.app:app_from_env``): settings from the environment."""
    configure_logging()
    return create_app(Settings.load())
