"""kill -9 a replay at random points, resume, and check every prescription is stored exactly once.

20 SIGKILL trials on SQLite (half of them with 2 worker processes, killed as a process group)
plus 5 on PostgreSQL; `benchmarks/soak_replay.py` runs the same for as long as you like.

The kill point is the test's, not the clock's: each trial picks a record not stored yet, and the
stand-in auditor stops at it (``RX_AUDIT_TEST_FREEZE_ID``) and says so through a marker file; the
test then kills the process group after a random pause (the other worker may be committing). A
replay cannot finish past that record, so every trial is a real mid-run kill on a fast or a slow
machine alike; what each trial stores before it is bounded, so the batch never runs out.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from replay_support import FakeAuditor, write_batch
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from rx_audit.queue import ReviewQueue
from rx_audit.replay import batch_source

SUPPORT = str(Path(__file__).resolve().parent)
ROOT = Path(__file__).resolve().parents[2]
CHUNK = 64


def replay_process(batch: Path, url: str, workers: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from rx_audit.replay import replay;"
        "replay(sys.argv[2], sys.argv[3], auditor_factory='replay_support:make_auditor', workers=int(sys.argv[4]),"
        f" chunk_size={CHUNK})"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, SUPPORT, str(batch), url, str(workers)],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


def readable_ids(batch: Path) -> list[str]:
    """The ids of the records the replay stores, in file order."""
    auditor, ids = FakeAuditor(), []
    for line in batch.read_text(encoding="utf-8").splitlines():
        try:
            auditor.audit(json.loads(line))
        except Exception:
            continue
        ids.append(json.loads(line)["id"])
    return ids


def stored_ids(url: str) -> set[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return set(connection.execute(text("SELECT prescription_id FROM rx_prescription")).scalars())
    finally:
        engine.dispose()


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


def run_trials(url: str, tmp_path: Path, trials: int, seed: int, lines: int) -> int:
    rng = random.Random(seed)
    batch = tmp_path / "batch.jsonl"
    counts = write_batch(batch, lines, bad_every=97, seed=seed)
    ids = readable_ids(batch)
    killed = 0
    for trial in range(trials):
        stored = stored_ids(url)
        remaining = [pid for pid in ids if pid not in stored]
        # At most 200 records before the kill point, plus what the other worker runs ahead (the
        # pipeline holds 3 chunks per worker): lines // trials leaves room for every trial.
        assert remaining, "the batch ran out before the last trial"
        freeze = remaining[rng.randrange(min(len(remaining), 200))]
        marker = tmp_path / f"frozen-{trial}"
        process = replay_process(
            batch,
            url,
            workers=1 + trial % 2,
            env={"RX_AUDIT_TEST_FREEZE_ID": freeze, "RX_AUDIT_TEST_FREEZE_MARK": str(marker)},
        )
        while not marker.exists():
            if process.poll() is not None:
                raise AssertionError(
                    f"trial {trial}: the replay ended before its kill point: "
                    + (process.stderr.read().decode() if process.stderr else str(process.returncode))
                )
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))  # let the other worker be anywhere, even mid-commit
        assert process.poll() is None  # frozen at the kill point: it cannot have finished
        os.killpg(process.pid, signal.SIGKILL)
        killed += 1
        process.wait(timeout=120)
        assert process.returncode == -signal.SIGKILL, process.stderr.read().decode() if process.stderr else ""
    final = replay_process(batch, url, workers=2)
    assert final.wait(timeout=600) == 0, final.stderr.read().decode() if final.stderr else ""
    check_exactly_once(url, batch, counts)
    return killed


def test_sigkill_trials(db_url: str, tmp_path: Path) -> None:
    sqlite = db_url.startswith("sqlite")
    trials = 20 if sqlite else 5
    killed = run_trials(db_url, tmp_path, trials, seed=11, lines=15000 if sqlite else 6000)
    assert killed == trials  # every trial really was killed mid-run
