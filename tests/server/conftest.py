"""Fixtures of the HTTP service tests: the real rulebook (loaded once), a migrated queue database on a
SQLite file and on PostgreSQL (the queue suites' fixtures: under CI=true the PostgreSQL cases fail
instead of skipping when RX_AUDIT_TEST_PG_URL is not set), a keys file with keys for two facilities,
and an in-process client."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "replay"))

from replay_support import database, db_url  # noqa: E402, F401

from rx_audit.server.auth import key_entry  # noqa: E402

KEY_A = "rxk_test-key-of-facility-A-0123456789abcdef"
KEY_B = "rxk_test-key-of-facility-B-0123456789abcdef"
FACILITY_A, FACILITY_B = "LZH", "HXZ"
_EXAMPLES = [json.loads(line) for line in (ROOT / "examples" / "prescriptions.jsonl").read_text("utf-8").splitlines()]
_BY_ID = {record["id"]: record for record in _EXAMPLES}


def prescription(rx_id: str, facility: str = FACILITY_A, *, kind: str = "critical") -> dict[str, Any]:
    """``critical``: paracetamol 1 g q4h (6 g a day, 拦截); ``fixed``: the doctor's fix (0.5 g q6h, not
    flagged); ``clean``: metformin as labelled (no finding)."""
    record = copy.deepcopy(_BY_ID["EX-0001" if kind == "clean" else "EX-0080"])
    record["id"] = rx_id
    record["facility"]["id"] = facility
    if kind == "fixed":
        fix = {"dose": {"value": 0.5, "unit": "g"}, "frequency": "q6h", "quantity": {"value": 12, "unit": "片"}}
        record["items"][0].update(fix)
    return record


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def auditor():
    from rx_audit import Auditor

    loaded = Auditor.from_path(ROOT / "rules")
    yield loaded
    loaded.close()


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(
        "# test keys\n" + key_entry("his-a", KEY_A, [FACILITY_A]) + "\n" + key_entry("his-b", KEY_B, [FACILITY_B]),
        encoding="utf-8",
    )
    return path


@pytest.fixture
def settings(db_url: str, keys_file: Path):  # noqa: F811
    from rx_audit.server import Settings

    return Settings(rules=ROOT / "rules", db_url=db_url, keys_file=keys_file, max_body_bytes=100_000)


@pytest.fixture
def queue(db_url: str):  # noqa: F811
    from rx_audit import ReviewQueue

    q = ReviewQueue(db_url)
    yield q
    q.close()


@pytest.fixture
def make_client(settings, auditor, queue) -> Iterator[Any]:
    """``make_client(**settings changes)``: an in-process client of an app on the test database."""
    from dataclasses import replace

    from fastapi.testclient import TestClient

    from rx_audit.server.app import create_app

    clients: list[TestClient] = []

    def make(**changes: Any) -> TestClient:
        client = TestClient(create_app(replace(settings, **changes), auditor=auditor, queue=queue))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()
