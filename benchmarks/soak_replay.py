"""Soak: kill -9 a replay at random points for as long as you like, then check nothing is lost or doubled.

.venv/bin/python benchmarks/soak_replay.py --trials 200 --lines 50000 [--db URL]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "replay"))

from test_replay_crash import check_exactly_once, replay_process  # noqa: E402


def main() -> int:
    import os
    import random
    import signal
    import time

    from replay_support import write_batch

    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--lines", type=int, default=30000)
    parser.add_argument("--db", default=None, help="SQLAlchemy URL (default: a fresh SQLite file)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        url = args.db or f"sqlite:///{tmp / 'soak.db'}"
        batch = tmp / "batch.jsonl"
        counts = write_batch(batch, args.lines, bad_every=97, seed=args.seed)
        killed = 0
        for trial in range(args.trials):
            process = replay_process(batch, url, workers=1 + trial % 3)
            time.sleep(rng.uniform(0.3, 4.0))
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                killed += 1
            process.wait()
            print(f"trial {trial + 1}/{args.trials}: {'killed' if process.returncode < 0 else 'finished'}", flush=True)
        final = replay_process(batch, url, workers=2)
        assert final.wait() == 0
        check_exactly_once(url, batch, counts)
        print(f"ok: {killed} kills, {counts['good']:,} prescriptions stored exactly once, {counts['bad']} errors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
