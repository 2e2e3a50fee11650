"""Property tests over the published OpenAPI schema (schemathesis, in process over ASGI): for every
JSON operation, generated requests with a valid API key never get a 5xx, and every answer — status,
Content-Type and body — is one the schema publishes. On SQLite with the real rulebook and queue;
a bounded number of examples per operation (no deadline: the machine's speed is not under test)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import FACILITY_A, KEY_A, ROOT, auth
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from rx_audit.server.app import openapi_document  # noqa: E402

# 50 per operation keeps the module within seconds; RX_AUDIT_SCHEMA_EXAMPLES=500 searches further by hand.
EXAMPLES = int(os.environ.get("RX_AUDIT_SCHEMA_EXAMPLES", "50"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]  # fmt: skip


@pytest.fixture(scope="module")
def served_app(tmp_path_factory: pytest.TempPathFactory, auditor):
    """One app for the module: a migrated SQLite file, the real rulebook, a key of facility A; rate
    limits high enough that the generated requests are never throttled (429 is published anyway)."""
    from rx_audit import ReviewQueue, migrate
    from rx_audit.server.app import create_app
    from rx_audit.server.auth import key_entry
    from rx_audit.server.settings import Settings

    folder = tmp_path_factory.mktemp("schema")
    url = f"sqlite:///{folder / 'queue.db'}"
    migrate(url)
    keys = folder / "keys.toml"
    keys.write_text(key_entry("his-a", KEY_A, [FACILITY_A]), encoding="utf-8")
    queue = ReviewQueue(url)
    settings_ = Settings(rules=ROOT / "rules", db_url=url, keys_file=Path(keys), max_body_bytes=200_000,
                         rate_per_minute=1_000_000, max_wait_seconds=0.5)  # fmt: skip
    app = create_app(settings_, auditor=auditor, queue=queue)
    yield app
    queue.close()


# Loaded when the module is collected: the schema needs no rulebook, database or keys.
schema = schemathesis.openapi.from_dict(openapi_document())


def _ours(case: Any) -> None:
    """Half of the generated prescriptions are made the key's facility's, so the audit and the queue
    are reached, not only the 403 of another facility (chosen by the body's hash: reproducible)."""
    body = case.body
    ours = case.path == "/v1/audit" and isinstance(body, dict) and case.media_type == "application/json"
    if ours and int(hashlib.sha256(repr(body).encode()).hexdigest(), 16) % 2 == 0:
        facility = body.get("facility")
        body["facility"] = {**facility, "id": FACILITY_A} if isinstance(facility, dict) else {"id": FACILITY_A}


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_every_operation_answers_as_published_without_server_errors(case, served_app):
    """No 5xx; status codes, media types and bodies all as the OpenAPI schema publishes them."""
    _ours(case)
    case.call_and_validate(app=served_app, headers=auth(KEY_A), checks=CHECKS)


def test_a_hook_request_whose_prefetch_is_not_an_object_is_422_naming_it(served_app):
    """Found by the property test above: ``prefetch`` as a list was a 500 (the adapter walked it as an
    object); now a 422 problem naming ``prefetch``, and ``draftOrders.entry`` likewise."""
    from fastapi.testclient import TestClient

    hook = {"hook": "order-sign", "hookInstance": "0",
            "context": {"userId": "Practitioner/1", "patientId": "1", "draftOrders": {"resourceType": "Bundle"}}}
    with TestClient(served_app) as client:
        for body, field in (({**hook, "prefetch": [None, None]}, "prefetch"),
                            ({**hook, "context": {**hook["context"], "draftOrders": {"resourceType": "Bundle",
                                                                                     "entry": 5}}},
                             "context.draftOrders.entry")):  # fmt: skip
            answer = client.post("/cds-services/rx-audit-order-sign", json=body, headers=auth(KEY_A))
            assert answer.status_code == 422 and answer.headers["content-type"].startswith("application/problem+json")
            assert answer.json()["field"] == field
