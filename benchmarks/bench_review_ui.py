"""Benchmark: the workbench renders in < 1.5 s with 100,000 items in the review queue.

    pytest benchmarks/bench_review_ui.py --benchmark-only        (seeding 100k items takes ~1 min)

The queue is seeded through its bulk path (``prepare_record`` + ``store_prepared``, as replay
does) into a temp SQLite file; ``RX_AUDIT_BENCH_ITEMS`` changes the size, ``RX_AUDIT_BENCH_DB``
reuses (or keeps) a seeded database between runs. Each round is one full AppTest run of
``review_ui/streamlit_app.py`` for a signed-in pharmacist: queue counts, oldest waiting time,
the first page of the queue; the second benchmark adds an opened (claimed) prescription.
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
LIMIT_SECONDS = 1.5
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
    """One full run: the queue overview (no item open) or, with ``item``, that claimed item too."""
    at = AppTest.from_file(str(APP), default_timeout=30)
    at.session_state["rx_user"] = dict(USER if item is not None else VIEWER)
    if item is not None:
        at.session_state["wb_item"] = item
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _check(benchmark) -> None:
    stats = benchmark.stats.stats
    print(f"\nworkbench render: median {stats.median:.3f}s, max {stats.max:.3f}s over {stats.rounds} rounds")
    assert stats.median < LIMIT_SECONDS, f"median {stats.median:.2f}s >= {LIMIT_SECONDS}s"


def test_workbench_renders_fast_with_100k_items(benchmark, ui_env: str) -> None:
    warm = render_workbench()  # first run opens the queue (st.cache_resource) and imports pages
    pending = [m.value for m in warm.metric if m.label == "待审 pending"]
    assert pending and int(pending[0].replace(",", "")) >= ITEMS * 0.99
    benchmark.pedantic(render_workbench, rounds=10, iterations=1)
    _check(benchmark)


def test_workbench_with_open_prescription_renders_fast(benchmark, ui_env: str) -> None:
    from rx_audit.queue import ReviewQueue

    queue = ReviewQueue(ui_env)
    item = queue.claim_next("yao01")
    assert item is not None
    render_workbench(item.id)
    benchmark.pedantic(render_workbench, args=(item.id,), rounds=10, iterations=1)
    _check(benchmark)


def test_seed_size_is_what_was_asked(seeded: str) -> None:
    from rx_audit.queue import ReviewQueue

    assert ReviewQueue(seeded).count() >= ITEMS


if __name__ == "__main__":  # quick manual timing without pytest-benchmark
    import tempfile

    url = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    seed_bulk(url, ITEMS)
    os.environ.update(RX_AUDIT_DB_URL=url, RX_AUDIT_USERS=str(DEMO_USERS), RX_AUDIT_RULES=str(RULES))
    render_workbench()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        render_workbench()
        times.append(time.perf_counter() - t0)
    print(f"median {statistics.median(times):.3f}s")
