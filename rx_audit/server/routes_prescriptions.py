"""``GET /v1/prescriptions/{id}`` (with ``?wait=N`` long polling) and
``POST /v1/prescriptions/{id}/double-sign``. A prescription of a facility outside the key's is 404,
exactly as if it did not exist."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rx_audit import STATUSES, StateError
from rx_audit.server.auth import ApiKey
from rx_audit.server.context import Caller, Services, json_object, read_body, services
from rx_audit.server.problems import Problem, validation_problem
from rx_audit.server.state import fingerprint, prescription_state

router = APIRouter()
PrescriptionId = Annotated[str, Path(min_length=1, max_length=200)]
FIRST_POLL, MAX_POLL = 0.1, 1.0  # seconds between database polls of a long poll: 0.1 growing to 1


class DoubleSign(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    doctor_id: str = Field(min_length=1, max_length=100)
    reason: str = Field(min_length=1, max_length=2000)


@router.get("/v1/prescriptions/{prescription_id}")
async def get_prescription(
    request: Request,
    prescription_id: PrescriptionId,
    key: Caller,
    wait: Annotated[float, Query(ge=0, description="long-poll up to N seconds for a change")] = 0,
    since: Annotated[str | None, Query(description="with wait: return as soon as the status is not this",
                                       json_schema_extra={"enum": ["not_flagged", *STATUSES]})] = None,
) -> JSONResponse:
    found = services(request)
    request.state.prescription_id = prescription_id
    if since is not None and since not in (*STATUSES, "not_flagged"):
        raise Problem(422, f"since: not a status ({', '.join(('not_flagged', *STATUSES))})", kind="invalid-field",
                      field="since")  # fmt: skip
    state = await _state(found, prescription_id, key)
    if wait > 0:
        state = await _long_poll(found, prescription_id, key, state, min(wait, found.settings.max_wait_seconds), since)
    request.state.outcome = state["status"]
    return JSONResponse(state)


async def _state(found: Services, prescription_id: str, key: ApiKey) -> dict[str, Any]:
    return await run_in_threadpool(prescription_state, found.queue, prescription_id, sorted(key.facilities))


async def _long_poll(
    found: Services, prescription_id: str, key: ApiKey, state: dict[str, Any], wait: float, since: str | None
) -> dict[str, Any]:
    """Poll the database (every worker and instance shares it) with back-off until the state changes —
    from ``since`` when given, else from what it was when the request came — or ``wait`` runs out."""
    start = fingerprint(state)

    def changed(now: dict[str, Any]) -> bool:
        return now["status"] != since if since is not None else fingerprint(now) != start

    if since is not None and changed(state):
        return state
    deadline = time.monotonic() + wait
    pause = FIRST_POLL
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 1.5, MAX_POLL)
        state = await _state(found, prescription_id, key)
        if changed(state):
            break
    return state


@router.post("/v1/prescriptions/{prescription_id}/double-sign")
async def double_sign(request: Request, prescription_id: PrescriptionId, key: Caller) -> JSONResponse:
    found = services(request)
    request.state.prescription_id = prescription_id
    body = json_object(await read_body(request, found.settings.max_body_bytes), "double-sign")
    try:
        signed = DoubleSign.model_validate(body)
    except ValidationError as error:
        raise validation_problem(list(error.errors()), "double-sign") from None

    def sign() -> dict[str, Any]:
        scope = sorted(key.facilities)
        latest = prescription_state(found.queue, prescription_id, scope)
        if latest["status"] != "returned":  # e.g. the latest version is a fix that needs no review
            raise StateError(f"prescription {prescription_id} v{latest['version']} is {latest['status']}: "
                             "only a returned prescription can be double-signed")  # fmt: skip
        found.queue.double_sign(prescription_id, signed.doctor_id, signed.reason, scope=scope)
        return prescription_state(found.queue, prescription_id, scope)

    state = await run_in_threadpool(sign)
    request.state.outcome = state["status"]
    return JSONResponse(state)
