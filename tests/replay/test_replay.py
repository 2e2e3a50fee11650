"""Replay: streaming, idempotent re-runs, bad records, workers, JSON arrays, reports, --compare."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from replay_support import FakeAuditor, write_batch

from rx_audit.replay import compare, replay
from rx_audit.report import render_compare, render_replay

FACTORY = "replay_support:make_auditor"


def expected(path: Path) -> tuple[int, int]:
    """(readable, flagged) computed directly with the stand-in auditor."""
    auditor, good, flagged = FakeAuditor(), 0, 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            result = auditor.audit(json.loads(line))
        except Exception:
            continue
        good += 1
        flagged += result.flagged
    return good, flagged


def test_replay_then_rerun_adds_nothing(db_url: str, tmp_path: Path) -> None:
    batch = tmp_path / "batch.jsonl"
    counts = write_batch(batch, 1200, bad_every=50)
    good, flagged = expected(batch)
    assert good == counts["good"]
    run = replay(batch, db_url, auditor_factory=FACTORY, chunk_size=100)
    assert (run.read, run.stored, run.errors, run.skipped) == (1200, good, counts["bad"], 0)
    assert run.summary["total"] == good and run.summary["flagged"] == flagged
    assert run.summary["errors"] == counts["bad"]
    assert {e["line"] for e in run.summary["error_samples"]} <= set(range(50, 1201, 50))
    assert any(e["id"] and e["field"] == "items.0.dose.value" for e in run.summary["error_samples"])
    again = replay(batch, db_url, auditor_factory=FACTORY, workers=2, chunk_size=64)
    assert again.stored == 0 and again.skipped == good
    assert again.summary == run.summary
    html = render_replay(again.to_dict())
    assert "<svg" in html and "http" not in html.replace("http-equiv", "")


def test_workers_and_json_array(db_url: str, tmp_path: Path) -> None:
    batch = tmp_path / "batch.json"
    write_batch(batch, 600, bad_every=40, as_array=True)
    run = replay(batch, db_url, auditor_factory=FACTORY, workers=2, chunk_size=50)
    assert run.read == 600 and run.errors == 15 and run.stored == 585
    assert run.summary["total"] == 585


def test_workers_fork_with_the_rulebook_loaded_once_in_the_parent(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers: the rulebook is loaded once, in the replaying process, and the workers audit
    with that copy (forked after it) instead of compiling and registering it each."""
    import os

    loads = tmp_path / "loads.txt"
    monkeypatch.setenv("RX_AUDIT_TEST_LOADS", str(loads))
    batch = tmp_path / "batch.jsonl"
    counts = write_batch(batch, 400)
    run = replay(batch, db_url, auditor_factory="replay_support:make_counted_auditor", workers=2, chunk_size=50)
    assert run.stored == counts["good"] == 400
    assert loads.read_text(encoding="utf-8").split() == [str(os.getpid())]


def test_payload_stored_as_received(tmp_path: Path) -> None:
    batch = tmp_path / "b.jsonl"
    write_batch(batch, 20)
    db = tmp_path / "q.db"
    replay(batch, f"sqlite:///{db}", auditor_factory=FACTORY)
    lines = batch.read_text(encoding="utf-8").splitlines()
    with sqlite3.connect(db) as connection:
        stored = [row[0] for row in connection.execute("SELECT payload FROM rx_prescription ORDER BY prescription_id")]
    assert stored == sorted(lines, key=lambda line: json.loads(line)["id"])


def test_compare_reports_changed_verdicts(tmp_path: Path) -> None:
    batch = tmp_path / "b.jsonl"
    write_batch(batch, 400, bad_every=100)
    result = compare(batch, "fake", "fake-new", auditor_factory=FACTORY, workers=2, chunk_size=50)
    old, new = FakeAuditor("fake"), FakeAuditor("fake-new")
    changed = 0
    for line in batch.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            a, b = old.audit(record), new.audit(record)
        except Exception:
            continue
        changed += (a.flagged, a.severity) != (b.flagged, b.severity)
    assert result.total == 396 and result.errors == 4
    assert result.changed == changed > 0
    assert result.newly_flagged == changed and result.rules_added == {"fake.dose.daily_max": changed}
    assert "fake.dose.daily_max" in render_compare(result.to_dict())


def test_unknown_factory_is_an_error(tmp_path: Path) -> None:
    batch = tmp_path / "b.jsonl"
    write_batch(batch, 3)
    with pytest.raises(ModuleNotFoundError):
        replay(batch, f"sqlite:///{tmp_path / 'q.db'}", auditor_factory="nope:make")
