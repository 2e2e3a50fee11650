"""Replay's side of the red-team findings, on SQLite and PostgreSQL: the same id twice, NUL
characters, records that fail in unexpected ways, a database that is down or not migrated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from replay_support import make_database
from sqlalchemy import create_engine, text

from rx_audit.queue import SCHEMA_HEAD, ReviewQueue, migrate
from rx_audit.replay import replay

FACTORY = "replay_support:make_auditor"
ROOT = Path(__file__).resolve().parents[2]
SUPPORT = str(Path(__file__).resolve().parent)


def record(rx_id: str, egfr: float, patient: str, **extra) -> dict:
    return {
        "id": rx_id,
        "issued_at": "2025-03-26T10:15:00+08:00",
        "facility": {"id": "LZH", "name": "凉州户镇分院"},
        "prescriber": {"id": "D1"},
        "department": "全科",
        "patient": {"id": patient, "egfr": egfr},
        "diagnoses": [{"code": "E11.900", "name": "2型糖尿病"}],
        "items": [{"id": "1", "drug": "二甲双胍", "dose": {"value": 250, "unit": "mg"}, "frequency": "bid"}],
        **extra,
    }


def write(path: Path, records: list[dict | str]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
        encoding="utf-8",
    )
    return path


def test_same_id_twice_is_a_new_version_and_a_repeat_is_counted(db_url: str, tmp_path: Path) -> None:
    first, second = record("DUP-1", 90, "P-A"), record("DUP-1", 10, "P-B")
    batch = write(tmp_path / "dup.jsonl", [first, second, first, record("OTHER", 90, "P-C")])
    for chunk in (100, 1):  # in one chunk, and across chunks
        url = f"sqlite:///{tmp_path / f'dup-{chunk}.db'}" if db_url.startswith("sqlite") else db_url
        if not url.startswith("sqlite") and chunk == 1:
            break
        run = replay(batch, url, auditor_factory=FACTORY, chunk_size=chunk)
        assert (run.read, run.stored, run.new_versions, run.repeats, run.flagged) == (4, 3, 1, 1, 1)
        assert run.summary["total"] == 3 and run.summary["flagged"] == 1 and run.summary["new_versions"] == 1
        with ReviewQueue(url) as queue:
            [item] = queue.list_items()
            assert (item.prescription_id, item.version, item.severity) == ("DUP-1", 2, "critical")
            assert item.patient_id == "P-B"
        again = replay(batch, url, auditor_factory=FACTORY, chunk_size=chunk)
        assert (again.stored, again.skipped, again.repeats, again.errors) == (0, 3, 1, 0)
        assert again.summary == run.summary


def test_cli_summary_says_repeats_and_new_versions(tmp_path: Path) -> None:
    batch = write(tmp_path / "dup.jsonl", [record("DUP-1", 90, "P-A"), record("DUP-1", 10, "P-B")])
    url = f"sqlite:///{tmp_path / 'new' / 'demo.db'}"  # a fresh file: replay migrates it itself
    done = subprocess.run(
        [sys.executable, "-m", "rx_audit.cli", "replay", str(batch), "--db", url, "--no-progress"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "RX_AUDIT_AUDITOR_FACTORY": FACTORY, "PYTHONPATH": SUPPORT},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    text_out = " ".join(done.stdout.split())
    assert "2 stored (1 new versions), 1 flagged, 0 repeats" in text_out


def test_nul_and_failing_records_never_stop_a_replay(db_url: str, tmp_path: Path) -> None:
    nul = record("NUL-1", 10, "P\u0000X", department="全\u0000科")
    nul["facility"]["name"] = "凉州\u0000分院"
    nul["items"][0]["drug"] = "二甲双胍\u0000"
    nul_id = record("NUL\u00002", 90, "P-2")
    huge = record("HUGE-1", 90, "P-5", version=3_000_000_000)  # an HIS bug: out of PostgreSQL's integer range
    boom = record("X-BOOM", 90, "P-3")
    lines = [record("OK-1", 90, "P-1"), nul, nul_id, huge, boom, record("OK-2", 10, "P-4")]
    batch = write(tmp_path / "nul.jsonl", lines)
    run = replay(batch, db_url, auditor_factory="replay_support:make_exploding_auditor", chunk_size=100)
    postgres = db_url.startswith("postgresql")
    assert run.read == 6
    assert run.errors == (2 if postgres else 1) and run.stored == 6 - run.errors
    errors = {e["line"]: e for e in run.summary["error_samples"]}
    assert errors[5]["id"] == "X-BOOM" and "RuntimeError" in errors[5]["error"]
    if postgres:
        assert errors[4]["id"] == huge["id"] and "cannot store" in errors[4]["error"]
    with ReviewQueue(db_url) as queue:
        ids = {hit.prescription_id for hit in queue.search(limit=100)}
        assert {"OK-1", "OK-2", "NUL-1"} <= ids and len(ids) == run.stored
        assert queue.verify().ok
    again = replay(batch, db_url, auditor_factory="replay_support:make_exploding_auditor", chunk_size=100)
    assert again.stored == 0 and again.skipped == run.stored and again.errors == run.errors
    assert again.summary["errors"] == run.summary["errors"]


def test_down_or_unmigrated_database_is_one_line(tmp_path: Path, request) -> None:
    batch = write(tmp_path / "b.jsonl", [record("A", 90, "P")])
    env = {**os.environ, "RX_AUDIT_AUDITOR_FACTORY": FACTORY, "PYTHONPATH": SUPPORT}
    down = "postgresql+psycopg://rx:s3cret-pw@127.0.0.1:9/x"
    old = f"sqlite:///{tmp_path / 'old.db'}"
    migrate(old, revision="0001")  # a queue at an older revision: the operator migrates, not replay
    for url, words in ((down, "database unavailable"), (old, "rx-audit queue migrate")):
        done = subprocess.run(
            [sys.executable, "-m", "rx_audit.cli", "replay", str(batch), "--db", url, "--no-progress"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 2 and words in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and "s3cret" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_replay_into_an_empty_postgres_schema_as_owner_migrates(tmp_path: Path, request) -> None:
    database = make_database("postgresql", tmp_path, request, migrated=False)
    batch = write(tmp_path / "b.jsonl", [record("A", 10, "P")])
    run = replay(batch, database.owner_url, auditor_factory=FACTORY)
    assert run.stored == 1 and run.flagged == 1
    engine = create_engine(database.owner_url)
    with engine.connect() as connection:
        # Migrated to the head revision, whatever number the newest migration has.
        assert connection.execute(text("SELECT version_num FROM rx_alembic_version")).scalar_one() == SCHEMA_HEAD
    engine.dispose()
