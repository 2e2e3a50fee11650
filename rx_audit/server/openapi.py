"""The published OpenAPI schema (``GET /openapi.json``): what each operation takes and answers.

The handlers read their bodies themselves (a size limit before parsing, problems naming the field),
so FastAPI cannot see the request bodies; and every error is a problem+json that FastAPI does not
know either. This module completes the schema FastAPI generates: the request bodies (a CONTRACT §1
prescription, a FHIR ``Bundle``, a double signature, a webhook registration, CDS Hooks requests),
the answers (§2 plus the queue's answer, the prescription state, problems for each error status an
operation can give) and the bearer authentication. The schemathesis property tests
(``tests/server/test_server_schema.py``) hold the service to it: no 5xx, every answer as published.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from rx_audit.contract import AuditResult, Prescription

REF = "#/components/schemas/{model}"
PROBLEM = "application/problem+json"
FHIR_JSON = "application/fhir+json"
STATES = ("not_flagged", "pending", "claimed", "approved", "returned", "double_signed", "auto_passed", "escalated")


class ProblemDetails(BaseModel):
    """RFC 9457: ``field`` names the input at fault, ``request_id`` is what to quote to the operator."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = None
    field: str | None = None


class Review(BaseModel):
    status: str
    item: str


class AuditAnswer(AuditResult):
    """CONTRACT §2, plus the queue's answer: the version stored, how it was stored, the review item."""

    version: int
    submission: Literal["stored", "new_version", "repeat"]
    review: Review | None = None


class Decision(BaseModel):
    action: str
    by: str | None = None
    role: str | None = None
    reason_code: str | None = None
    reason: str | None = None
    note: str | None = None
    at: str


class PrescriptionState(BaseModel):
    """What the HIS releases or blocks payment on (``GET /v1/prescriptions/{id}``)."""

    id: str
    version: int
    facility: str | None = None
    flagged: bool
    severity: Literal["info", "warning", "critical"] | None = None
    rulebook: str
    status: Literal[STATES]  # type: ignore[valid-type]
    item: str | None = None
    decision: Decision | None = None
    release: bool


class DoubleSignBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    doctor_id: str = Field(min_length=1, max_length=100)
    reason: str = Field(min_length=1, max_length=2000)


class WebhookBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2000, description="http(s) URL the decisions are POSTed to")
    secret: str = Field(min_length=16, max_length=500, description="the HMAC-SHA256 key of the signatures")
    facility: str | None = Field(default=None, min_length=1, max_length=200)


class WebhookRegistered(BaseModel):
    facility: str
    url: str


class WebhookUnregistered(BaseModel):
    facility: str
    url: None


class WebhookResent(BaseModel):
    event_id: str
    status: Literal["pending"]
    attempts: int
    was: Literal["failed", "delivered"]


class WebhookList(BaseModel):
    webhooks: list[dict[str, Any]]


class WebhookEvents(BaseModel):
    events: list[dict[str, Any]]


class Reloaded(BaseModel):
    rulebook: str
    previous: str
    workers: Literal["this", "all"]


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    checks: dict[str, Any]
    worker: int


class Card(BaseModel):
    model_config = ConfigDict(extra="allow")

    summary: str = Field(max_length=140)
    indicator: Literal["info", "warning", "critical"]
    source: dict[str, Any]


class Cards(BaseModel):
    cards: list[Card]


class Discovery(BaseModel):
    services: list[dict[str, Any]]


class FeedbackAnswer(BaseModel):
    feedback: list[dict[str, Any]]


MODELS: tuple[type[BaseModel], ...] = (
    ProblemDetails, Prescription, AuditAnswer, PrescriptionState, DoubleSignBody, WebhookBody, WebhookRegistered,
    WebhookList, WebhookEvents, WebhookUnregistered, WebhookResent, Reloaded, Health, Ready, Cards, Discovery,
    FeedbackAnswer,
)  # fmt: skip

# Open objects: the FHIR mapping and the CDS Hooks adapter check them and answer 422 naming the field.
FHIR_BUNDLE = {"type": "object", "required": ["resourceType"], "properties": {"resourceType": {"type": "string"}}}
# CDS Hooks 2.0 requests as the specification writes them (the order-sign context; feedback entries).
HOOK_REQUEST = {
    "type": "object",
    "required": ["hook", "hookInstance", "context"],
    "properties": {
        "hook": {"const": "order-sign"},
        "hookInstance": {"type": "string", "minLength": 1},
        "context": {
            "type": "object",
            "required": ["userId", "patientId", "draftOrders"],
            "properties": {
                "userId": {"type": "string"},
                "patientId": {"type": "string"},
                "draftOrders": {"type": "object", "required": ["resourceType"],
                                "properties": {"resourceType": {"const": "Bundle"}, "entry": {"type": "array"}}},
            },
        },
        "prefetch": {"type": "object"},
    },
}  # fmt: skip
FEEDBACK_REQUEST = {
    "type": "object",
    "required": ["feedback"],
    "properties": {"feedback": {"type": "array", "items": {
        "type": "object",
        "required": ["card", "outcome", "outcomeTimestamp"],
        "properties": {
            "card": {"type": "string", "minLength": 1},
            "outcome": {"enum": ["accepted", "overridden"]},
            "outcomeTimestamp": {"type": "string", "minLength": 1},
            "acceptedSuggestions": {"type": "array", "items": {"type": "object"}},
            "overrideReason": {"type": "object"},
        },
    }}},
}  # fmt: skip

AUTHENTICATED = (401, 429, 503)  # no or unknown key; over the key's rate; the queue's database away
ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/v1/audit"): (403, 413, 415, 422),
    ("get", "/v1/prescriptions/{prescription_id}"): (404, 422),
    ("post", "/v1/prescriptions/{prescription_id}/double-sign"): (404, 409, 413, 422),
    ("get", "/v1/webhooks"): (),
    ("put", "/v1/webhooks"): (413, 422),
    ("get", "/v1/webhooks/events"): (422,),
    ("get", "/cds-services"): (),
    ("post", "/cds-services/rx-audit-order-sign"): (403, 413, 422),
    ("post", "/cds-services/rx-audit-order-sign/feedback"): (413, 422),
    ("post", "/v1/admin/reload"): (403, 409),
    ("delete", "/v1/webhooks"): (404, 422),
    ("post", "/v1/webhooks/events/{event_id}/resend"): (404, 409, 422),
}
OPEN = {("get", "/healthz"): (), ("get", "/readyz"): (503,), ("get", "/metrics"): ()}
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/audit"): {
        "application/json": {"schema": {"$ref": REF.format(model="Prescription")}},
        FHIR_JSON: {"schema": FHIR_BUNDLE},
    },
    ("post", "/v1/prescriptions/{prescription_id}/double-sign"): {
        "application/json": {"schema": {"$ref": REF.format(model="DoubleSignBody")}}
    },
    ("put", "/v1/webhooks"): {"application/json": {"schema": {"$ref": REF.format(model="WebhookBody")}}},
    ("post", "/cds-services/rx-audit-order-sign"): {"application/json": {"schema": HOOK_REQUEST}},
    ("post", "/cds-services/rx-audit-order-sign/feedback"): {"application/json": {"schema": FEEDBACK_REQUEST}},
}
ANSWERS: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/audit"): {
        "application/json": {"schema": {"$ref": REF.format(model="AuditAnswer")}},
        FHIR_JSON: {"schema": FHIR_BUNDLE},
    },
    ("get", "/v1/prescriptions/{prescription_id}"): {"$model": "PrescriptionState"},
    ("post", "/v1/prescriptions/{prescription_id}/double-sign"): {"$model": "PrescriptionState"},
    ("get", "/v1/webhooks"): {"$model": "WebhookList"},
    ("put", "/v1/webhooks"): {"$model": "WebhookRegistered"},
    ("get", "/v1/webhooks/events"): {"$model": "WebhookEvents"},
    ("get", "/cds-services"): {"$model": "Discovery"},
    ("post", "/cds-services/rx-audit-order-sign"): {"$model": "Cards"},
    ("post", "/cds-services/rx-audit-order-sign/feedback"): {"$model": "FeedbackAnswer"},
    ("post", "/v1/admin/reload"): {"$model": "Reloaded"},
    ("delete", "/v1/webhooks"): {"$model": "WebhookUnregistered"},
    ("post", "/v1/webhooks/events/{event_id}/resend"): {"$model": "WebhookResent"},
    ("get", "/healthz"): {"$model": "Health"},
    ("get", "/readyz"): {"$model": "Ready"},
    ("get", "/metrics"): {"text/plain": {"schema": {"type": "string"}}},
}
TITLES = {
    401: "no or unknown API key",
    403: "another facility's (admin routes: not an admin key)",
    404: "not found (or another facility's)",
    409: "not in a state that allows it (reload: the rulebook has errors, the live version stays)",
    413: "body over the size limit",
    415: "unsupported Content-Type",
    422: "invalid input (the field is named)",
    429: "rate limit (Retry-After)",
    503: "the review queue's database is unavailable (Retry-After)",
}


def extend(extra_errors: dict[tuple[str, str], tuple[int, ...]], answers: dict[tuple[str, str], dict[str, Any]],
           bodies: dict[tuple[str, str], dict[str, Any]] | None = None) -> None:  # fmt: skip
    """Routes added elsewhere in the package (admin, webhooks admin) publish their errors and answers."""
    ERRORS.update(extra_errors)
    ANSWERS.update(answers)
    BODIES.update(bodies or {})


def _content(answer: dict[str, Any]) -> dict[str, Any]:
    if "$model" in answer:
        return {"application/json": {"schema": {"$ref": REF.format(model=answer["$model"])}}}
    return answer


def complete(schema: dict[str, Any], models: tuple[type[BaseModel], ...] = MODELS) -> dict[str, Any]:
    """FastAPI's schema with the bodies, answers, problems and the bearer scheme filled in."""
    components = schema.setdefault("components", {})
    defined = components.setdefault("schemas", {})
    for model in models:
        generated = model.model_json_schema(ref_template=REF, mode="serialization" if model is not Prescription
                                            else "validation")  # fmt: skip
        defined.update(generated.pop("$defs", {}))
        defined[model.__name__] = generated
    bearer = "Authorization: Bearer <API key>; on /cds-services also the EHR's CDS Hooks JWT"
    components["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer", "description": bearer}}
    problem = {PROBLEM: {"schema": {"$ref": REF.format(model="ProblemDetails")}}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            where = (method, path)
            authenticated = where in ERRORS
            statuses = (*ERRORS[where], *AUTHENTICATED) if authenticated else OPEN.get(where, ())
            if authenticated:
                operation["security"] = [{"apiKey": []}]
            if where in BODIES:
                operation["requestBody"] = {"required": True, "content": BODIES[where]}
            responses: dict[str, Any] = {}
            if where in ANSWERS:
                responses["200"] = {"description": "OK", "content": _content(ANSWERS[where])}
            else:
                responses["200"] = operation.get("responses", {}).get("200", {"description": "OK"})
            for status in sorted(set(statuses)):
                responses[str(status)] = {"description": TITLES.get(status, "error"), "content": problem}
            operation["responses"] = responses
    return schema


def install(app: FastAPI) -> None:
    """``app.openapi()`` answers the completed schema (built once, on the first request for it)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
