"""kill -9 a replay at random points, resume, and check every prescription is stored exactly once.

20 SIGKILL trials on SQLite (half of them with 2 worker processes, killed as a process group)
plus 5 on PostgreSQL; `benchmarks/soak_replay.py` runs the same for as long as you like.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from replay_support import write_batch

from rx_audit.queue import ReviewQueue
from rx_audit.replay import batch_source

SUPPORT = str(Path(__file__).resolve().parent)
ROOT = Path(__file__).resolve().parents[2]


def replay_process(batch: Path, url: str, workers: int) -> subprocess.Popen:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from rx_audit.replay import replay;"
        "replay(sys.argv[2], sys.argv[3], auditor_factory='replay_support:make_auditor', workers=int(sys.argv[4]),"
        " chunk_size=64)"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, SUPPORT, str(batch), url, str(workers)],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def check_exactly_once(url: str, batch: Path, counts: dict[str, int]) -> None:
    from sqlalchemy import text

    with ReviewQueue(url) as queue, queue._engine.connect() as connection:

        def scalar(sql: str) -> int:
            return int(connection.execute(text(sql)).scalar_one())

        assert scalar("SELECT count(*) FROM rx_prescription") == counts["good"]
        assert scalar("SELECT count(DISTINCT prescription_id) FROM rx_prescription") == counts["good"]
        assert scalar("SELECT count(*) FROM rx_audit_result") == counts["good"]
        assert scalar("SELECT count(*) FROM rx_review_item") == scalar(
            "SELECT count(*) FROM rx_audit_result WHERE flagged"
        )
        assert scalar("SELECT count(*) FROM rx_audit_trail WHERE action = 'submitted'") == scalar(
            "SELECT count(*) FROM rx_review_item"
        )
        assert (
            scalar(
                "SELECT count(*) FROM rx_item_finding f LEFT JOIN rx_review_item i ON i.id = f.item_id "
                "WHERE i.id IS NULL"
            )
            == 0
        )
        assert scalar("SELECT count(*) FROM rx_replay_error") == counts["bad"]
        summary = queue.batch_summary(batch_source(batch))
        assert summary["total"] == counts["good"] and summary["errors"] == counts["bad"]
        if queue.is_sqlite:
            assert connection.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"
            assert connection.execute(text("PRAGMA foreign_key_check")).all() == []


def run_trials(url: str, tmp_path: Path, trials: int, seed: int) -> int:
    rng = random.Random(seed)
    batch = tmp_path / "batch.jsonl"
    counts = write_batch(batch, 6000, bad_every=97, seed=seed)
    killed = 0
    for trial in range(trials):
        process = replay_process(batch, url, workers=1 + trial % 2)
        time.sleep(rng.uniform(0.4, 2.5))
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            killed += 1
        process.wait(timeout=60)
        if process.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(process.stderr.read().decode() if process.stderr else process.returncode)
    final = replay_process(batch, url, workers=2)
    assert final.wait(timeout=300) == 0, final.stderr.read().decode() if final.stderr else ""
    check_exactly_once(url, batch, counts)
    return killed


def test_sigkill_trials(db_url: str, tmp_path: Path) -> None:
    trials = 20 if db_url.startswith("sqlite") else 5
    killed = run_trials(db_url, tmp_path, trials, seed=11)
    assert killed >= trials // 2  # most trials really were killed mid-run
