"""`rx-audit` as users run it: real subprocesses, real files, exit statuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, RULES


def run(*args: str, stdin: str | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RX_AUDIT_RULES": str(RULES), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "rx_audit.cli", *args], input=stdin, capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


GOOD = {"id": "C1", "patient": {"age_years": 50, "sex": "M", "egfr": 90, "allergies": []}, "diagnoses": ["E11.9"],
        "items": [{"drug": "二甲双胍", "form": "片", "dose": {"value": 500, "unit": "mg"}, "frequency": "bid",
                   "route": "po", "days": 7}]}
FLAGGED = {**GOOD, "id": "C2", "diagnoses": ["J06.9"]}


def test_audit_prints_one_result_a_line_in_input_order(tmp_path):
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in (FLAGGED, GOOD, FLAGGED)) + "\n",
                    encoding="utf-8")
    done = run("audit", str(path))
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["id"] for r in results] == ["C2", "C1", "C2"]
    assert [r["flagged"] for r in results] == [True, False, True]
    assert results[0]["findings"][0]["rule"] == "metformin.indication"


def test_audit_reads_stdin_and_a_json_array():
    done = run("audit", "-", stdin=json.dumps([GOOD, FLAGGED], ensure_ascii=False))
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 2


def test_unreadable_record_sets_exit_status_and_the_rest_is_audited(tmp_path):
    path = tmp_path / "batch.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{oops\n" + json.dumps(FLAGGED) + "\n", encoding="utf-8")
    done = run("audit", str(path))
    assert done.returncode == 1
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[1]["line"] == 2 and "error" in lines[1] and lines[2]["id"] == "C2"
    assert "line" in done.stderr


def test_table_format_for_people(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(FLAGGED, ensure_ascii=False) + "\n", encoding="utf-8")
    done = run("audit", str(path), "--format", "table")
    assert done.returncode == 0 and "审方结果" in done.stdout and "C2" in done.stdout and "警示" in done.stdout


def test_rules_check_passes_on_the_shipped_rulebook():
    done = run("rules", "check", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout


def test_rules_check_names_file_and_line_and_fails(tmp_path):
    bad = tmp_path / "rules"
    bad.mkdir()
    (bad / "classes.yaml").write_text("classes:\n  statin: {name: 他汀类, sorce: typo}\n", encoding="utf-8")
    done = run("rules", "check", str(bad))
    assert done.returncode == 1
    assert "rules/classes.yaml:2" in done.stderr.replace("\n", "") and "sorce" in done.stderr


def test_rules_test_runs_the_examples():
    done = run("rules", "test", str(RULES))
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed, 0 failed" in done.stdout
