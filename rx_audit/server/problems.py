"""RFC 9457 problem details (``application/problem+json``) for every error.

A problem names what was wrong (``field`` for bad input, as a dotted path such as
``items.0.dose.value``) and the request id to quote to the operator; never a traceback, a SQL
statement, a file path of the server or a database URL.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rx_audit.errors import (
    NotFoundError,
    PrescriptionError,
    QueueError,
    ReasonRequiredError,
    StateError,
)

PROBLEM_TYPE = "application/problem+json"
_INPUT_ECHO = re.compile(r"\s*\(input: .*\)\s*$", re.DOTALL)
TYPE_BASE = "https://rx-audit.org/problems/"
log = logging.getLogger("rx_audit.server")

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


class Problem(Exception):
    """Raise anywhere in a request: answered as a problem+json with this status."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.field = field
        self.headers = headers or {}
        self.extra = extra


def problem_response(request: Request | None, problem: Problem) -> JSONResponse:
    title = TITLES.get(problem.status, "Error")
    body: dict[str, Any] = {
        "type": TYPE_BASE + (problem.kind or title.lower().replace(" ", "-")),
        "title": title,
        "status": problem.status,
        "detail": problem.detail,
    }
    if request is not None:
        body["instance"] = request.url.path
        request_id = getattr(request.state, "request_id", None)
        if request_id:
            body["request_id"] = request_id
    if problem.field:
        body["field"] = problem.field
    body.update(problem.extra)
    return JSONResponse(body, status_code=problem.status, media_type=PROBLEM_TYPE, headers=problem.headers)


def field_path(location: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "items", 0, "dose")`` → ``items.0.dose`` (the request part dropped)."""
    parts = [str(part) for part in location]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts)


def validation_problem(errors: list[Any], what: str = "request") -> Problem:
    first = errors[0] if errors else {"loc": (), "msg": "invalid"}
    field = field_path(tuple(first.get("loc", ())))
    return Problem(
        422,
        f"{what}: {field or 'body'}: {first.get('msg', 'invalid')}",
        kind="invalid-field",
        field=field or None,
        errors=[{"field": field_path(tuple(e.get("loc", ()))), "message": str(e.get("msg", ""))} for e in errors[:20]],
    )


def from_exception(error: Exception) -> Problem:
    """The problem for an error of rx_audit (a bug or a database failure is 500/503 without detail)."""
    if isinstance(error, Problem):
        return error
    if isinstance(error, PrescriptionError):  # the input echoed back is cut: the field names it
        detail = _INPUT_ECHO.sub("", error.message)
        return Problem(422, detail, kind="invalid-prescription", field=error.field,
                       prescription_id=error.prescription_id)  # fmt: skip
    if isinstance(error, NotFoundError):
        return Problem(404, "no such prescription (or not one of your facilities)", kind="not-found")
    if isinstance(error, ReasonRequiredError | StateError):
        return Problem(409, str(error), kind="conflict")
    if isinstance(error, QueueError):  # the database: unavailable, locked, read-only, full, not migrated
        return Problem(503, "the review queue's database is unavailable; retry later", kind="database-unavailable",
                       headers={"Retry-After": "5"})  # fmt: skip
    return Problem(500, "internal error; quote the request id to the operator", kind="internal")


def answer_error(request: Request, error: Exception) -> JSONResponse:
    """The problem for ``error``; a server error is logged as one JSON line with the request id, the
    error's type and where it happened — not its message (it may quote a prescription)."""
    problem = from_exception(error)
    if problem.status >= 500:
        frames = traceback.extract_tb(error.__traceback__) if problem.status == 500 else []
        log.error(json.dumps({
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": "error",
            "request_id": getattr(request.state, "request_id", None),
            "status": problem.status,
            "error": type(error).__name__,
            "frames": [f"{frame.filename}:{frame.lineno} in {frame.name}" for frame in frames][-8:],
        }, ensure_ascii=False))  # fmt: skip
    return problem_response(request, problem)


def install(app: FastAPI) -> None:
    """Every error of the app answered as a problem."""

    async def on_problem(request: Request, error: Exception) -> JSONResponse:
        return answer_error(request, error)

    async def on_http(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        status = error.status_code
        detail = error.detail if isinstance(error.detail, str) and status < 500 else TITLES.get(status, "Error")
        return problem_response(request, Problem(status, detail, headers=dict(error.headers or {})))

    async def on_validation(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return problem_response(request, validation_problem(list(error.errors())))

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_problem)
    for kind in (PrescriptionError, QueueError):
        app.add_exception_handler(kind, on_problem)
