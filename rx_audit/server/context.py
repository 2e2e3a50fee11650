"""What every request handler shares: the app's services, the caller (authenticated, rate-limited)
and the request body read within the size limit."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from rx_audit import Auditor, ReviewQueue
from rx_audit.server.auth import ApiKey, KeyRing, RateLimiter
from rx_audit.server.batching import SubmitBatcher
from rx_audit.server.cds_jwt import JwtVerifier, looks_like_jwt
from rx_audit.server.metrics import Metrics
from rx_audit.server.problems import Problem
from rx_audit.server.settings import Settings

T = TypeVar("T")


@dataclass
class Services:
    settings: Settings
    auditor: Auditor
    queue: ReviewQueue
    keys: KeyRing
    limiter: RateLimiter
    metrics: Metrics
    jwt: JwtVerifier
    store: SubmitBatcher  # the group commit of POST /v1/audit
    audit_limiter: anyio.CapacityLimiter | None = None  # made in the event loop, on first use


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


async def caller(request: Request) -> ApiKey:
    """The API key of ``Authorization: Bearer <key>`` (401 otherwise), within its rate (429). On
    ``/cds-services`` the bearer may instead be the EHR's CDS Hooks JWT (:mod:`.cds_jwt`).

    Async: a key is one sha256 and a dict lookup, cheaper than the thread hop FastAPI gives a sync
    dependency on every request; only a JWT (which may fetch the issuer's JWKS) goes to a thread."""
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Problem(401, "Authorization: Bearer <key> required", kind="unauthorized",
                      headers={"WWW-Authenticate": 'Bearer realm="rx-audit"'})  # fmt: skip
    found = services(request)
    presented = presented.strip()
    if request.url.path.startswith("/cds-services") and looks_like_jwt(presented):
        key: ApiKey | None = await run_in_threadpool(found.jwt.verify, presented)  # 401 problem if refused
    else:
        key = found.keys.find(presented)
    if key is None:
        raise Problem(401, "unknown API key", kind="unauthorized",
                      headers={"WWW-Authenticate": 'Bearer realm="rx-audit", error="invalid_token"'})  # fmt: skip
    request.state.key_id = key.id
    wait = found.limiter.take(key.id)
    if wait > 0:
        raise Problem(429, f"rate limit of key {key.id} reached; retry after {wait:.0f} s", kind="rate-limited",
                      headers={"Retry-After": str(max(1, round(wait)))})  # fmt: skip
    return key


async def in_worker_thread(found: Services, function: Callable[..., T], *args: Any) -> T:
    """Run an audit-and-store call in a thread, at most ``audit_threads`` at once in this worker.

    The GIL makes more threads no faster at auditing, and on SQLite every extra writer only waits in
    the busy handler's sleeps for the one write lock; requests beyond the limit wait in the event loop
    instead, in order (measured in benchmarks/README.md, "HTTP service")."""
    if found.audit_limiter is None:
        found.audit_limiter = anyio.CapacityLimiter(found.settings.audit_threads)
    return await anyio.to_thread.run_sync(functools.partial(function, *args), limiter=found.audit_limiter)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes (413 beyond, without reading the rest)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Problem(413, f"request body larger than {limit} bytes", kind="too-large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, f"request body larger than {limit} bytes", kind="too-large")
        chunks.append(chunk)
    return b"".join(chunks)


def json_object(body: bytes, what: str) -> dict[str, Any]:
    """The body as one JSON object, or a 422 problem saying why not (never the parser's internals)."""
    import json

    if not body.strip():
        raise Problem(422, f"{what}: empty body", kind="invalid-json")
    try:
        value = json.loads(body)
    except UnicodeDecodeError:
        raise Problem(422, f"{what}: not UTF-8", kind="invalid-json") from None
    except RecursionError:
        raise Problem(422, f"{what}: JSON nested too deeply", kind="invalid-json") from None
    except ValueError as error:
        where = f" at line {error.lineno} column {error.colno}" if isinstance(error, json.JSONDecodeError) else ""
        raise Problem(422, f"{what}: not JSON{where}", kind="invalid-json") from None
    if not isinstance(value, dict):
        raise Problem(422, f"{what}: a JSON object expected", kind="invalid-json")
    return value


Caller = Annotated[ApiKey, Depends(caller)]
