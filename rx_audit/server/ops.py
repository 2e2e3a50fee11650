"""Operations: ``/healthz`` (the process answers), ``/readyz`` (the database answers at the schema this
code needs, the rulebook is loaded), ``/metrics`` (Prometheus), and the access log — one JSON line a
request with its id, key id, prescription id, status, outcome and latency; never a body, a name or
any other patient data."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from rx_audit.server.context import services
from rx_audit.server.problems import Problem, answer_error

router = APIRouter()
access_log = logging.getLogger("rx_audit.server.access")
REQUEST_ID = "X-Request-ID"
_ROUTES = ("/v1/audit", "/v1/prescriptions")


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    found = services(request)
    checks: dict[str, Any] = {"rulebook": found.auditor.rulebook_hash}

    def database() -> None:
        found.queue.count(status="pending")

    try:
        await run_in_threadpool(database)
        checks["database"] = "ok"
    except Exception:
        raise Problem(503, "the review queue's database does not answer", kind="not-ready",
                      checks={**checks, "database": "unavailable"}) from None  # fmt: skip
    # the worker's pid: with several workers, which one answered (a reload reaches each in turn)
    return JSONResponse({"status": "ready", "checks": checks, "worker": os.getpid()})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    found = services(request)
    body = await run_in_threadpool(found.metrics.render)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def _request_id(request: Request) -> str:
    given = request.headers.get(REQUEST_ID, "")
    if 0 < len(given) <= 64 and all(c.isalnum() or c in "-_." for c in given):
        return given
    return uuid.uuid4().hex


def _route(path: str) -> str:
    if path == "/v1/audit":
        return path
    if path.startswith("/v1/prescriptions/"):
        return "/v1/prescriptions/{id}/double-sign" if path.endswith("/double-sign") else "/v1/prescriptions/{id}"
    return "other"


def install(app: FastAPI) -> None:
    @app.middleware("http")
    async def log_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.request_id = _request_id(request)
        started = time.perf_counter()
        route = _route(request.url.path)
        gauge = services(request).metrics.in_flight if route != "other" else None
        if gauge is not None:
            gauge.inc()
        try:
            response = await call_next(request)
        except Exception as error:  # an error no handler took (a bug): still a problem, still logged
            response = answer_error(request, error)
        finally:
            if gauge is not None:
                gauge.dec()
        elapsed = time.perf_counter() - started
        response.headers[REQUEST_ID] = request.state.request_id
        if route != "other":
            services(request).metrics.latency.labels(route).observe(elapsed)
        access_log.info(json.dumps({
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "request_id": request.state.request_id,
            "method": request.method,
            "route": route if route != "other" else request.url.path[:100],
            "key": getattr(request.state, "key_id", None),
            "prescription": getattr(request.state, "prescription_id", None),
            "status": response.status_code,
            "outcome": getattr(request.state, "outcome", None),
            "ms": round(elapsed * 1000, 1),
        }, ensure_ascii=False))  # fmt: skip
        return response
