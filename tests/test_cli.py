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


# --- the queue commands: one clear line for every bad database, never a traceback ---------------------

PG_URL = os.environ.get("RX_AUDIT_TEST_PG_URL")


def db_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RX_AUDIT_DB", "RX_AUDIT_DB_URL")}
    return {**env, "RX_AUDIT_RULES": str(RULES), "COLUMNS": "200", **extra}


def run_db(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rx_audit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=db_env(**env), timeout=120)


def one_line(done: subprocess.CompletedProcess[str], status: int = 2) -> str:
    """The command failed with ``status`` and said so in one line, without a traceback."""
    assert done.returncode == status, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def migrated(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    assert run_db("queue", "migrate", "--db", url).returncode == 0
    return url


def test_version_prints_the_package_version():
    from rx_audit import __version__

    done = run("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"rx-audit {__version__}"


BAD_URLS = {
    "not a URL": "no-such-scheme",
    "unsupported": "mysql://u:s3cret@127.0.0.1/db",
    "unreachable": "postgresql+psycopg://rx:s3cret@127.0.0.1:9/rx_audit_test",
    "unwritable path": "sqlite:////proc/rx-audit/no/q.db",
}
DB_COMMANDS = [("queue", "stats"), ("queue", "list"), ("queue", "verify"), ("queue", "migrate")]


def test_every_db_command_refuses_a_bad_url_in_one_masked_line(tmp_path):
    batch = tmp_path / "one.jsonl"
    batch.write_text(json.dumps(FLAGGED, ensure_ascii=False) + "\n", encoding="utf-8")
    for name, url in BAD_URLS.items():
        for command in [*DB_COMMANDS, ("replay", str(batch))]:
            done = run_db(*command, "--db", url, cwd=tmp_path)
            line = one_line(done)
            assert "s3cret" not in done.stdout + done.stderr, (name, command, line)
            assert line.startswith("rx-audit: "), (name, command, line)
            if name != "not a URL":
                assert "***" in line or "/proc/" in line or "<database URL>" in line, (name, command, line)
    assert not (tmp_path / "rx_audit.db").exists()


def test_reads_never_create_a_database(tmp_path):
    missing = tmp_path / "typo.db"
    for command in (("queue", "stats"), ("queue", "list"), ("queue", "verify")):
        line = one_line(run_db(*command, "--db", f"sqlite:///{missing}", cwd=tmp_path))
        assert "no such database file" in line and "rx-audit queue migrate" in line
        line = one_line(run_db(*command, cwd=tmp_path))  # the default URL: ./rx_audit.db
        assert "rx_audit.db" in line
    assert not missing.exists() and not (tmp_path / "rx_audit.db").exists()


def test_status_severity_and_dates_are_validated(tmp_path):
    url = migrated(tmp_path)
    assert "--status 'bogus'" in one_line(run_db("queue", "list", "--db", url, "--status", "bogus"))
    assert "pending" in one_line(run_db("queue", "list", "--db", url, "--status", "pending,bogus"))
    assert "--severity" in one_line(run_db("queue", "list", "--db", url, "--severity", "fatal"))
    assert "not a date" in one_line(run_db("queue", "stats", "--db", url, "--from", "2025-13-01"))
    assert "not a date" in one_line(run_db("queue", "stats", "--db", url, "--to", "yesterday"))
    assert "after" in one_line(run_db("queue", "stats", "--db", url, "--from", "2025-03-02", "--to", "2025-03-01"))
    done = run_db("queue", "list", "--db", url, "--status", "pending,returned", "--json")
    assert done.returncode == 0 and done.stdout == ""


def test_replay_report_to_an_unwritable_path_is_one_line(tmp_path):
    batch = tmp_path / "one.jsonl"
    batch.write_text(json.dumps(FLAGGED, ensure_ascii=False) + "\n", encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'q.db'}"
    line = one_line(run_db("replay", str(batch), "--db", url, "--report", "/proc/rx-audit/r.html"))
    assert "--report" in line and "cannot write" in line
    assert "no such file" in one_line(run_db("replay", str(tmp_path / "absent.jsonl"), "--db", url))
    assert "--db URL is required" in one_line(run_db("replay", str(batch)))


def test_one_database_setting_with_its_alias(tmp_path):
    url = migrated(tmp_path)
    for env in ({"RX_AUDIT_DB_URL": url}, {"RX_AUDIT_DB": url}, {"RX_AUDIT_DB_URL": url, "RX_AUDIT_DB": url}):
        done = run_db("queue", "stats", "--json", cwd=tmp_path, **env)
        assert done.returncode == 0, (env, done.stderr)
        assert json.loads(done.stdout)["total"] == 0
    other = f"sqlite:///{tmp_path / 'other.db'}"
    line = one_line(run_db("queue", "stats", cwd=tmp_path, RX_AUDIT_DB_URL=url, RX_AUDIT_DB=other))
    assert "RX_AUDIT_DB_URL" in line and "differ" in line
    assert run_db("queue", "stats", "--db", url, RX_AUDIT_DB=other).returncode == 0  # --db wins
    help_text = run_db("queue", "stats", "--help").stdout
    assert "RX_AUDIT_DB_URL" in help_text and "RX_AUDIT_DB" in help_text.replace("RX_AUDIT_DB_URL", "")


def test_replay_then_stats_and_list_from_the_command_line(tmp_path):
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in (FLAGGED, GOOD)) + "\n", encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'q.db'}"
    done = run_db("replay", str(batch), "--db", url, "--no-progress", "--report", str(tmp_path / "r.html"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r.html").read_text(encoding="utf-8").startswith("<!doctype html>")
    stats = json.loads(run_db("queue", "stats", "--db", url, "--json").stdout)
    assert {"total", "pending", "approved", "returned"} <= set(stats)
    assert stats["total"] == 1 and stats["pending"] == 1 and stats["prescriptions"] == 2
    assert stats["held_rate"] == {"numerator": 1, "denominator": 2, "value": 0.5}
    assert "metformin.indication" in [g["key"] for g in stats["by_rule"]]
    listed = run_db("queue", "list", "--db", url, "--status", "pending", "--json")
    assert [json.loads(line)["prescription_id"] for line in listed.stdout.splitlines()] == ["C2"]
    assert run_db("queue", "list", "--db", url, "--claimed-by", "ph01", "--json").stdout == ""
    table = run_db("queue", "stats", "--db", url)
    assert table.returncode == 0 and "held_rate" in table.stdout and "50.00% (1/2)" in table.stdout


def test_postgres_wrong_password_and_real_server(tmp_path):
    if not PG_URL:
        if os.environ.get("CI"):
            raise AssertionError("RX_AUDIT_TEST_PG_URL is not set: CI runs the CLI against PostgreSQL")
        import pytest

        pytest.skip("no PostgreSQL (eval \"$(scripts/postgres.sh)\")")
    from sqlalchemy.engine import make_url

    wrong = make_url(PG_URL).set(password="s3cret-wrong").render_as_string(hide_password=False)
    for command in DB_COMMANDS:
        done = run_db(*command, "--db", wrong)
        line = one_line(done)
        assert "s3cret" not in done.stdout + done.stderr and "***" in line, line
    done = run_db("queue", "verify", "--db", PG_URL)  # the real server: no traceback whatever its schema
    assert "Traceback" not in done.stderr and done.returncode in (0, 1, 2)


def test_cli_statuses_are_the_queues():
    from rx_audit.cli.queue import STATUSES as CLI_STATUSES
    from rx_audit.queue import STATUSES

    assert CLI_STATUSES == STATUSES


def test_cli_modules_do_not_import_each_other_in_a_cycle():
    import ast

    package = ROOT / "rx_audit" / "cli"
    for module in package.glob("*.py"):
        if module.name in ("__init__.py", "__main__.py"):
            continue
        tree = ast.parse(module.read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert "rx_audit.cli" not in imported, module.name  # only the package imports its modules
