"""What every request handler shares: the app's services, the caller (authenticated, rate-limited)
and the request body read within the size limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from rx_audit import Auditor, ReviewQueue
from rx_audit.server.auth import ApiKey, KeyRing, RateLimiter
from rx_audit.server.cds_jwt import JwtVerifier, looks_like_jwt
from rx_audit.server.metrics import Metrics
from rx_audit.server.problems import Problem
from rx_audit.server.settings import Settings


@dataclass
class Services:
    settings: Settings
    auditor: Auditor
    queue: ReviewQueue
    keys: KeyRing
    limiter: RateLimiter
    metrics: Metrics
    jwt: JwtVerifier


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


def caller(request: Request) -> ApiKey:
    """The API key of ``Authorization: Bearer <key>`` (401 otherwise), within its rate (429). On
    ``/cds-services`` the bearer may instead be the EHR's CDS Hooks JWT (:mod:`.cds_jwt`)."""
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Problem(401, "Authorization: Bearer <key> required", kind="unauthorized",
                      headers={"WWW-Authenticate": 'Bearer realm="rx-audit"'})  # fmt: skip
    found = services(request)
    presented = presented.strip()
    if request.url.path.startswith("/cds-services") and looks_like_jwt(presented):
        key: ApiKey | None = found.jwt.verify(presented)  # the EHR's CDS Hooks JWT (401 problem if refused)
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
