"""Benchmarks of the review UI (issue 13):

* the workbench renders in < 0.5 s (median) with 100,000 items in the review queue (SQLite);
* the statistics page renders in < 1 s (median) with 1,000,000 audited prescriptions (PostgreSQL),
  its figures computed afresh each round.

    eval "$(bash scripts/postgres.sh)"
    RX_AUDIT_BENCH_DB=/tmp/bench100k.db .venv/bin/pytest benchmarks/bench_review_ui.py \
        -c benchmarks/pytest.ini --benchmark-only -s

The queue is seeded through its bulk path (``prepare_record`` + ``store_prepared``, as replay
does) into a SQLite file (~75 s for 100,000); ``RX_AUDIT_BENCH_ITEMS`` changes the size,
``RX_AUDIT_BENCH_DB`` reuses (or keeps) a seeded database between runs. The statistics database is
seeded by bulk SQL (``generate_series``, ~40 s for 1,000,000) into the schema
``RX_AUDIT_BENCH_PG_SCHEMA`` (kept for later runs). Each round is one full rerun of
``review_ui/streamlit_app.py`` for a signed-in pharmacist — what Streamlit does on every click.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

# The repository root is on sys.path through benchmarks/pytest.ini (pythonpath = ..).
from tests.review_ui.helpers import APP, DEMO_USERS, RULES, prescription, result

ITEMS = int(os.environ.get("RX_AUDIT_BENCH_ITEMS", "100000"))
LIMIT_SECONDS = 0.5
USER = {"id": "yao01", "name": "王药师 (demo)", "role": "pharmacist", "facilities": [], "via": "password"}
VIEWER = {"id": "bench_viewer", "name": "只看队列", "role": "pharmacist", "facilities": [], "via": "password"}


def seed_bulk(db_url: str, count: int, batch: int = 2000) -> None:
    from rx_audit.queue import ReviewQueue, migrate, prepare_record

    migrate(db_url)
    queue = ReviewQueue(db_url)
    have = queue.count()
    if have >= count:
        return
    severities = ("critical", "warning", "warning", "info")
    for start in range(have + 1, count + 1, batch):
        records = []
        for n in range(start, min(start + batch, count + 1)):
            record = prescription(n, egfr=24 + n % 40)
            record["department"] = ("全科", "内科", "儿科", "外科")[n % 4]
            records.append(prepare_record(record, result(record, severity=severities[n % 4])))
        queue.store_prepared(records, source="bench")
    queue.close()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = os.environ.get("RX_AUDIT_BENCH_DB") or str(tmp_path_factory.mktemp("bench") / "bench.db")
    db_url = f"sqlite:///{path}"
    started = time.perf_counter()
    seed_bulk(db_url, ITEMS)
    print(f"\nseeded {ITEMS:,} items in {time.perf_counter() - started:.1f}s -> {path}")
    return db_url


@pytest.fixture
def ui_env(seeded: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    monkeypatch.setenv("RX_AUDIT_DB_URL", seeded)
    monkeypatch.setenv("RX_AUDIT_USERS", str(DEMO_USERS))
    monkeypatch.setenv("RX_AUDIT_RULES", str(RULES))
    monkeypatch.delenv("RX_AUDIT_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return seeded


def render_workbench(item: int | None = None) -> AppTest:
    """A signed-in pharmacist's workbench, run once (warm-up): the queue overview (no item open) or,
    with ``item``, that claimed item too. Reruns of the returned AppTest are what is timed."""
    at = AppTest.from_file(str(APP), default_timeout=30)
    at.session_state["rx_user"] = dict(USER if item is not None else VIEWER)
    if item is not None:
        at.session_state["wb_item"] = item
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def rerun(at: AppTest) -> None:
    """One full rerun of the page script, as on every click in a pharmacist's session. (A fresh
    AppTest would also time Streamlit's one-off scan of installed packages for components, ~0.4 s
    here, which a server does once per process, not per render.)"""
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def _check(benchmark, what: str = "workbench render", limit: float = LIMIT_SECONDS) -> None:
    stats = benchmark.stats.stats
    print(f"\n{what}: median {stats.median:.3f}s, max {stats.max:.3f}s over {stats.rounds} rounds")
    assert stats.median < limit, f"median {stats.median:.2f}s >= {limit}s"


def test_workbench_renders_fast_with_100k_items(benchmark, ui_env: str) -> None:
    at = render_workbench()  # first run opens the queue (st.cache_resource) and imports pages
    pending = [m.value for m in at.metric if m.label == "待审 pending"]
    assert pending and int(pending[0].replace(",", "")) >= ITEMS * 0.99
    benchmark.pedantic(rerun, args=(at,), rounds=15, iterations=1, warmup_rounds=1)
    _check(benchmark)


def test_workbench_with_open_prescription_renders_fast(benchmark, ui_env: str) -> None:
    from rx_audit.queue import ReviewQueue

    queue = ReviewQueue(ui_env)
    item = queue.claim_next("yao01")
    assert item is not None
    at = render_workbench(item.id)
    assert any("审方时限" in c.value for c in at.caption)
    benchmark.pedantic(rerun, args=(at,), rounds=15, iterations=1, warmup_rounds=1)
    # Each rerun rendered the whole prescription, not a shortcut.
    assert any(item.prescription_id in s.value for s in at.subheader) and at.get("iframe")
    _check(benchmark)
    queue.release(item.id, "yao01")  # a reused database stays as it was


# --- the statistics page on PostgreSQL with 1,000,000 audited prescriptions -------------------------

STATS_AUDITS = int(os.environ.get("RX_AUDIT_BENCH_AUDITS", "1000000"))
STATS_LIMIT_SECONDS = 1.0
STATS_SCHEMA = os.environ.get("RX_AUDIT_BENCH_PG_SCHEMA", "bench_stats_1m")

# One statement per table, each a generate_series: 1,000,000 prescriptions over 365 days, 30
# facilities, 600 prescribers; 12 % flagged (an item each, with one or two findings); 80 % of the
# items decided by one of 40 pharmacists (a quarter of them returned; a third of the returns
# answered by a second version). Payloads are minimal: the statistics never read them.
_SEED_SQL = [
    """INSERT INTO rx_prescription (id, prescription_id, version, visit_type, facility_id, facility_name,
        department, prescriber_id, patient_id, issued_at, day, received_at, source, payload, content_hash)
       SELECT n, 'B' || n, 1, 'outpatient', 'F' || (n % 30), 'F' || (n % 30) || '分院', '全科', 'D' || (n % 600),
              'P' || (n % 300000), ts, to_char(ts AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM-DD'), ts, 'bench', '{}',
              md5(n::text)
       FROM (SELECT n, timestamptz '2025-01-01 08:00+08' + ((n % 365) || ' days')::interval
                       + ((n % 600) || ' minutes')::interval AS ts
             FROM generate_series(1, :n) AS n) AS s""",
    """INSERT INTO rx_audit_result (id, prescription_row_id, prescription_id, version, rulebook, flagged,
        severity, audited_at, findings)
       SELECT id, id, prescription_id, 1, 'sha256:bench', (id % 25) < 3,
              CASE WHEN (id % 25) = 0 THEN 'critical' WHEN (id % 25) < 3 THEN 'warning' WHEN (id % 5) = 0
                   THEN 'info' END, received_at, '[]'
       FROM rx_prescription""",
    """INSERT INTO rx_review_item (id, prescription_id, version, rulebook, status, severity, severity_rank,
        categories, rules, facility_id, facility_name, department, prescriber_id, patient_id, day, source,
        submitted_at, queued_at, claimed_by, claimed_at, decided_by, decided_at, reason_code, priority,
        prescription_row_id, audit_result_id, ready, requeue_status)
       SELECT a.id, a.prescription_id, 1, a.rulebook,
              CASE WHEN a.id % 10 >= 8 THEN 'pending' WHEN a.id % 4 = 0 THEN 'returned' ELSE 'approved' END,
              a.severity, CASE a.severity WHEN 'critical' THEN 3 ELSE 2 END,
              ',dose,', ',rule' || (a.id % 120) || ',', p.facility_id, p.facility_name, p.department,
              p.prescriber_id, p.patient_id, p.day, 'bench', p.received_at, p.received_at,
              CASE WHEN a.id % 10 < 8 THEN 'ph' || (a.id % 40) END,
              CASE WHEN a.id % 10 < 8 THEN p.received_at + interval '30 seconds' END,
              CASE WHEN a.id % 10 < 8 THEN 'ph' || (a.id % 40) END,
              CASE WHEN a.id % 10 < 8 THEN p.received_at + ((60 + a.id % 600) || ' seconds')::interval END,
              CASE WHEN a.id % 10 < 8 THEN CASE WHEN a.id % 4 = 0 THEN 'R06' ELSE 'A01' END END,
              0, a.prescription_row_id, a.id, CASE WHEN a.id % 10 >= 8 THEN 1 ELSE 0 END, 'pending'
       FROM rx_audit_result a JOIN rx_prescription p ON p.id = a.prescription_row_id WHERE a.flagged""",
    """INSERT INTO rx_item_finding (item_id, rule, category, severity)
       SELECT id, 'rule' || (id % 120), 'dose', severity FROM rx_review_item
       UNION ALL SELECT id, 'rule' || (id % 7 + 200), 'interaction', 'warning' FROM rx_review_item WHERE id % 3 = 0""",
    """INSERT INTO rx_decision (item_id, prescription_id, version, actor, role, action, reason_code, comment, at)
       SELECT id, prescription_id, 1, decided_by, 'pharmacist',
              CASE status WHEN 'returned' THEN 'return' ELSE 'approve' END, reason_code, '', decided_at
       FROM rx_review_item WHERE decided_by IS NOT NULL""",
    # Explicit ids above: the id sequence moves past them before rows that take their id from it.
    "SELECT setval(pg_get_serial_sequence('rx_prescription', 'id'), (SELECT max(id) FROM rx_prescription))",
    """INSERT INTO rx_prescription (prescription_id, version, visit_type, facility_id, facility_name, department,
        prescriber_id, patient_id, issued_at, day, received_at, source, payload, content_hash, previous_id)
       SELECT prescription_id, 2, visit_type, facility_id, facility_name, department, prescriber_id, patient_id,
              issued_at, day, received_at + interval '1 hour', 'bench', '{}', md5(prescription_id || 'v2'), id
       FROM rx_prescription WHERE id IN (SELECT id FROM rx_review_item WHERE status = 'returned' AND id % 3 = 0)""",
]


def seed_statistics_pg(owner_url: str, schema: str, audits: int) -> int:
    """A migrated schema with ``audits`` audited prescriptions (kept: later runs reuse it); the count."""
    from sqlalchemy import create_engine, text

    from rx_audit.queue import migrate

    separator = "&" if "?" in owner_url else "?"
    url = f"{owner_url}{separator}options=-csearch_path%3D{schema}"
    owner = create_engine(owner_url)
    with owner.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
    migrate(url)
    engine = create_engine(url)
    with engine.begin() as connection:
        have = connection.execute(text("SELECT count(*) FROM rx_audit_result")).scalar_one()
    if have != audits:
        # Start over: the trail and decisions are append-only (a trigger refuses TRUNCATE), so the
        # schema is dropped and migrated again.
        with owner.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
            connection.execute(text(f"CREATE SCHEMA {schema}"))
        migrate(url)
        with engine.begin() as connection:
            for statement in _SEED_SQL:
                connection.execute(text(statement), {"n": audits} if ":n" in statement else {})
    with engine.begin() as connection:
        connection.execute(text("ANALYZE"))
        return int(connection.execute(text("SELECT count(*) FROM rx_audit_result")).scalar_one())


@pytest.fixture(scope="module")
def stats_db() -> str:
    base = os.environ.get("RX_AUDIT_TEST_PG_URL")
    if not base:
        pytest.skip('RX_AUDIT_TEST_PG_URL not set (eval "$(scripts/postgres.sh)")')
    owner = os.environ.get("RX_AUDIT_TEST_PG_OWNER_URL") or base
    started = time.perf_counter()
    count = seed_statistics_pg(owner, STATS_SCHEMA, STATS_AUDITS)
    print(f"\nstatistics database: {count:,} audited prescriptions ({time.perf_counter() - started:.0f}s)")
    separator = "&" if "?" in owner else "?"
    return f"{owner}{separator}options=-csearch_path%3D{STATS_SCHEMA}"


def test_statistics_page_with_1m_audits_on_postgresql(benchmark, stats_db: str, monkeypatch, tmp_path) -> None:
    """The statistics page, its figures computed afresh each round (Streamlit's one-minute cache
    cleared: a cached render would time nothing)."""
    import streamlit as st

    monkeypatch.setenv("RX_AUDIT_DB_URL", stats_db)
    monkeypatch.setenv("RX_AUDIT_USERS", str(DEMO_USERS))
    monkeypatch.setenv("RX_AUDIT_RULES", str(RULES))
    monkeypatch.delenv("RX_AUDIT_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state["rx_user"] = dict(USER)
    at.run()
    at.switch_page("views/statistics.py").run()
    assert not at.exception, [e.value for e in at.exception]
    audited = {m.label: m.value for m in at.metric}["审核处方 audited"]
    print(f"\nstatistics page, latest 30 days with data: {audited} audited prescriptions")

    def cold() -> None:
        st.cache_data.clear()
        rerun(at)

    benchmark.pedantic(cold, rounds=5, iterations=1)
    _check(benchmark, "statistics page (cold)", STATS_LIMIT_SECONDS)


def test_seed_size_is_what_was_asked(seeded: str) -> None:
    from rx_audit.queue import ReviewQueue

    assert ReviewQueue(seeded).count() >= ITEMS


if __name__ == "__main__":  # quick manual timing without pytest-benchmark
    import tempfile

    url = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    seed_bulk(url, ITEMS)
    os.environ.update(RX_AUDIT_DB_URL=url, RX_AUDIT_USERS=str(DEMO_USERS), RX_AUDIT_RULES=str(RULES))
    app = render_workbench()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        rerun(app)
        times.append(time.perf_counter() - t0)
    print(f"median {statistics.median(times):.3f}s")
