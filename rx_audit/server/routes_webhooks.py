"""Webhook administration, each call for the caller's own facilities: ``PUT /v1/webhooks`` registers
the facility's URL (a host of the ``webhook_allow`` list, when one is set) and secret,
``DELETE /v1/webhooks`` unregisters it, ``GET /v1/webhooks`` lists the registrations (never the
secret), ``GET /v1/webhooks/events?status=`` the delivery state of the events, and
``POST /v1/webhooks/events/{event_id}/resend`` sends a failed (or delivered) event again with a fresh
count of attempts. :func:`install` adds these routes and runs the deliverer
(:mod:`rx_audit.server.webhooks`) for the app's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rx_audit.queue.webhooks import DELIVERY_STATUSES
from rx_audit.server.auth import ApiKey
from rx_audit.server.context import Caller, json_object, read_body, services
from rx_audit.server.problems import Problem, validation_problem
from rx_audit.server.webhooks import Deliverer, allowed, enabled

router = APIRouter()


class Registration(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    url: str = Field(min_length=1, max_length=2000)
    secret: str = Field(min_length=16, max_length=500)
    facility: str | None = Field(default=None, min_length=1, max_length=200)


@router.put("/v1/webhooks")
async def register(request: Request, key: Caller) -> JSONResponse:
    found = services(request)
    body = json_object(await read_body(request, found.settings.max_body_bytes), "webhook")
    try:
        registration = Registration.model_validate(body)
    except ValidationError as error:
        raise validation_problem(list(error.errors()), "webhook") from None
    parts = urlsplit(registration.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Problem(422, "url: an http(s) URL expected", kind="invalid-field", field="url")
    if not allowed(registration.url, found.settings.webhook_allow):
        raise Problem(422, f"url: host {parts.hostname!r} is not in the webhook allow-list (webhook_allow)",
                      kind="invalid-field", field="url")  # fmt: skip
    facility = _facility(key, registration.facility)
    await run_in_threadpool(found.queue.set_webhook, facility, registration.url, registration.secret)
    return JSONResponse({"facility": facility, "url": registration.url})


def _facility(key: ApiKey, facility: str | None) -> str:
    """The facility named (one of the key's), or the key's only one."""
    if facility is None:
        if len(key.facilities) != 1:
            raise Problem(422, "facility: required, the key serves several facilities", kind="invalid-field",
                          field="facility")  # fmt: skip
        (facility,) = key.facilities
    elif facility not in key.facilities:
        raise Problem(422, "facility: not one of the key's facilities", kind="invalid-field", field="facility")
    return facility


@router.delete("/v1/webhooks")
async def unregister(
    request: Request,
    key: Caller,
    facility: Annotated[str | None, Query(min_length=1, max_length=200, description="when the key has several")] = None,
) -> JSONResponse:
    found = services(request)
    chosen = _facility(key, facility)
    if not await run_in_threadpool(found.queue.delete_webhook, chosen):
        raise Problem(404, f"no webhook registered for facility {chosen}", kind="not-found")
    return JSONResponse({"facility": chosen, "url": None})


@router.post("/v1/webhooks/events/{event_id}/resend")
async def resend(request: Request, key: Caller, event_id: Annotated[str, Path(min_length=1, max_length=100)]
                 ) -> JSONResponse:  # fmt: skip
    found = services(request)

    def again() -> dict[str, Any]:
        was = found.queue.resend_webhook_event(event_id, sorted(key.facilities))
        if was is None:
            raise Problem(404, "no such webhook event (or not one of your facilities)", kind="not-found")
        if was == "pending":
            raise Problem(409, "the event is pending: it is being delivered already", kind="conflict")
        return {"event_id": event_id, "status": "pending", "attempts": 0, "was": was}

    return JSONResponse(await run_in_threadpool(again))


@router.get("/v1/webhooks")
async def registrations(request: Request, key: Caller) -> JSONResponse:
    found = services(request)
    listed = await run_in_threadpool(found.queue.webhooks, sorted(key.facilities))
    return JSONResponse({"webhooks": listed})


@router.get("/v1/webhooks/events")
async def events(
    request: Request,
    key: Caller,
    status: Annotated[str | None, Query(description="pending | delivered | failed",
                                        json_schema_extra={"enum": list(DELIVERY_STATUSES)})] = None,
    prescription_id: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    if status is not None and status not in DELIVERY_STATUSES:
        raise Problem(422, f"status: one of {', '.join(DELIVERY_STATUSES)}", kind="invalid-field", field="status")
    found = services(request)

    def read() -> list[dict[str, Any]]:
        return found.queue.webhook_events(
            sorted(key.facilities), status=status, prescription_id=prescription_id, limit=limit
        )

    return JSONResponse({"events": await run_in_threadpool(read)})


def install(app: FastAPI) -> None:
    """Add the routes; run the deliverer thread while the app runs (unless ``RX_AUDIT_WEBHOOKS=0``)."""
    app.include_router(router)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(running: Any) -> AsyncIterator[Any]:
        async with inner(running) as state:
            found = app.state.services
            deliverer = Deliverer(found.queue, allow=found.settings.webhook_allow)
            app.state.webhook_deliverer = deliverer
            if enabled():
                deliverer.start()
            try:
                yield state
            finally:
                deliverer.stop()

    app.router.lifespan_context = lifespan
