"""The writers' gate on a SQLite file: a writer waits for the one holding the gate and goes on as
soon as it is released — instead of sleeping in SQLite's busy handler — and a gate that cannot be
made is no gate."""

from __future__ import annotations

import fcntl
import os
import random
import threading
from pathlib import Path

from replay_support import FakeAuditor, prescription

from rx_audit.queue import ReviewQueue, migrate


def _flagged(rx_id: str) -> tuple[dict, object]:
    record = prescription(1, random.Random(7), prefix=rx_id)
    result = FakeAuditor().audit(record)
    return record, result


def test_a_writer_waits_at_the_gate_and_goes_on_when_it_is_released(tmp_path: Path) -> None:
    """Another process's writer (here: the gate's lock file held by this test) keeps a submission
    waiting — not failing — and the submission is stored once the gate is released."""
    database = tmp_path / "queue.db"
    url = f"sqlite:///{database}"
    migrate(url)
    queue = ReviewQueue(url, lock_timeout=120)
    record, result = _flagged("GATE")
    holder = os.open(f"{database}.write-lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    done: list[object] = []
    writer = threading.Thread(target=lambda: done.append(queue.submit_outcome(record, result)))
    writer.start()
    writer.join(timeout=1.0)
    assert writer.is_alive() and not done  # waiting at the gate while it is held
    fcntl.flock(holder, fcntl.LOCK_UN)
    os.close(holder)
    writer.join(timeout=120)
    assert not writer.is_alive() and done and done[0].kind == "stored"
    assert len(queue.search(prescription_id=record["id"])) == (1 if result.flagged else 0)
    queue.close()


def test_no_gate_where_the_lock_file_cannot_be_made(tmp_path: Path) -> None:
    """A database in a folder the service may not write beside (the lock file cannot be created):
    writes go on under SQLite's own lock, as before."""
    folder = tmp_path / "db"
    folder.mkdir()
    url = f"sqlite:///{folder / 'queue.db'}"
    migrate(url)
    blocker = folder / "queue.db.write-lock"
    blocker.mkdir()  # a directory where the lock file would be: os.open fails
    queue = ReviewQueue(url)
    record, result = _flagged("NOGATE")
    assert queue.submit_outcome(record, result).kind == "stored"
    queue.close()
