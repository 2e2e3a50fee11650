"""Fixtures: every test here runs on a SQLite file and on PostgreSQL (RX_AUDIT_TEST_PG_URL).

Without RX_AUDIT_TEST_PG_URL the PostgreSQL cases fail under CI (CI=true) and skip locally;
`eval "$(scripts/postgres.sh)"` starts a server and sets it. Each PostgreSQL test gets its own
schema (search_path in the URL), dropped afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "replay"))

from replay_support import make_db_url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return make_db_url(request.param, tmp_path, request)


@pytest.fixture
def queue(db_url: str):
    from rx_audit.queue import ReviewQueue

    q = ReviewQueue(db_url)
    yield q
    q.close()
