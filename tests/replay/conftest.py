"""Fixtures: every test here runs on a SQLite file and on PostgreSQL (RX_AUDIT_TEST_PG_URL).

Without RX_AUDIT_TEST_PG_URL the PostgreSQL cases fail under CI (CI=true) and skip locally;
`eval "$(scripts/postgres.sh)"` starts a server and sets it. Each PostgreSQL test gets its own
schema (search_path in the URL), dropped afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The fixtures live in replay_support, shared by both suites.
from replay_support import database, db_url, queue  # noqa: F401
