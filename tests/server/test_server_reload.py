"""Hot reload of the rulebook: ``POST /v1/admin/reload`` (admin keys) in process, and SIGHUP to a real
``rx-audit serve --workers 2`` on a copy of rules/: a changed rule is live in every worker (new hash
in /readyz and in the answers, new behaviour), a rule file with errors keeps the live version."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import httpx
import pytest
from conftest import FACILITY_A, KEY_A, ROOT, auth, prescription
from process_support import serving, wait_until

from rx_audit.server.auth import key_entry

ADMIN = "rxk_test-admin-key-0123456789abcdef0123456789"
RULE = Path("drugs") / "paracetamol.yaml"
# The adult scheme's per-day limit of paracetamol (the critical prescription exceeds it): critical → warning.
CRITICAL = "    per_day: {max: 4000}\n    frequencies: [qd, bid, tid, qid, q4h, q6h, q8h, prn, st, q12h, qn]\n" \
           "    severity: critical\n"  # fmt: skip
WARNING = CRITICAL.replace("severity: critical", "severity: warning")


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    copy = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", copy)
    assert CRITICAL in (copy / RULE).read_text(encoding="utf-8")
    return copy


@pytest.fixture
def admin_keys(tmp_path: Path) -> Path:
    path = tmp_path / "admin-keys.toml"
    path.write_text(key_entry("his-a", KEY_A, [FACILITY_A]) + "\n" + key_entry("ops", ADMIN, [FACILITY_A], admin=True),
                    encoding="utf-8")  # fmt: skip
    return path


def edit(rules: Path, old: str, new: str) -> None:
    path = rules / RULE
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


def break_rule(rules: Path) -> str:
    """A YAML error in the rule file; returns the good text to put back."""
    path = rules / RULE
    good = path.read_text(encoding="utf-8")
    path.write_text(good + "\ndose: [unclosed\n", encoding="utf-8")
    return good


def test_admin_reload_swaps_the_rulebook_and_a_broken_one_is_a_409_keeping_the_live(rules, admin_keys, db_url):
    """In process: only an admin key may reload (403 otherwise); a rule file with errors is a 409 problem
    naming the file relative to the rulebook, the live version answering on; a good change is live at
    once — the new hash in /readyz and in the audit, the new severity."""
    from fastapi.testclient import TestClient

    from rx_audit.server.app import create_app
    from rx_audit.server.settings import Settings

    settings = Settings(rules=rules, db_url=db_url, keys_file=admin_keys)
    with TestClient(create_app(settings)) as client:
        before = client.get("/readyz").json()["checks"]["rulebook"]
        first = client.post("/v1/audit", json=prescription("RL-1"), headers=auth(KEY_A)).json()
        assert first["severity"] == "critical" and first["rulebook"] == before

        refused = client.post("/v1/admin/reload", headers=auth(KEY_A))
        assert refused.status_code == 403 and refused.headers["content-type"].startswith("application/problem+json")

        good = break_rule(rules)
        broken = client.post("/v1/admin/reload", headers=auth(ADMIN))
        assert broken.status_code == 409, broken.text
        problem = broken.json()
        assert problem["rulebook"] == before and problem["errors"]
        assert any(error["file"] == f"rules/{RULE.as_posix()}" for error in problem["errors"]), problem["errors"]
        assert str(rules) not in broken.text  # no server paths
        assert client.get("/readyz").json()["checks"]["rulebook"] == before
        assert client.post("/v1/audit", json=prescription("RL-2"), headers=auth(KEY_A)).json()["severity"] == "critical"

        (rules / RULE).write_text(good, encoding="utf-8")
        edit(rules, CRITICAL, WARNING)
        done = client.post("/v1/admin/reload", headers=auth(ADMIN))
        assert done.status_code == 200, done.text
        reloaded = done.json()
        assert reloaded["previous"] == before and reloaded["rulebook"] != before and reloaded["workers"] == "this"
        assert client.get("/readyz").json()["checks"]["rulebook"] == reloaded["rulebook"]
        after = client.post("/v1/audit", json=prescription("RL-3"), headers=auth(KEY_A)).json()
        assert after["severity"] == "warning" and after["rulebook"] == reloaded["rulebook"]
        metrics = client.get("/metrics").text
        assert 'rx_audit_rulebook_reloads_total{outcome="failed"} 1.0' in metrics
        assert 'rx_audit_rulebook_reloads_total{outcome="reloaded"} 1.0' in metrics


def _workers(served, count: int) -> set[int]:
    """The workers' pids, as /readyz names them (fresh connections land on each in turn)."""
    seen: set[int] = set()

    def all_seen() -> bool:
        answer = served.ready()
        if answer:
            seen.add(answer["worker"])
        return len(seen) >= count

    wait_until(all_seen, "every worker answered /readyz", served.process)
    return seen


def _all_on(served, workers: set[int], rulebook: str) -> None:
    """Wait until every worker has answered /readyz with ``rulebook``."""
    done: set[int] = set()

    def every() -> bool:
        answer = served.ready()
        if answer and answer["checks"]["rulebook"] == rulebook:
            done.add(answer["worker"])
        return done >= workers

    wait_until(every, f"every worker on {rulebook[:19]}", served.process)


def _counted(served, outcome: str, count: int) -> bool:
    text = httpx.get(f"{served.base}/metrics", timeout=30).text
    line = f'rx_audit_rulebook_reloads_total{{outcome="{outcome}"}} {float(count)}'
    return line in text


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_sighup_reloads_every_worker_and_a_broken_rule_file_keeps_the_live_version(rules, admin_keys, db_url,
                                                                                  tmp_path):  # fmt: skip
    """A real service with two workers: SIGHUP after a rule change → both workers on the new hash, new
    behaviour; SIGHUP with a broken rule file → both fail to reload (counted), the live version stays;
    the admin call on one worker brings the other along (it SIGHUPs the supervisor)."""
    args = ["--workers", "2", "--rules", str(rules), "--db", db_url, "--keys", str(admin_keys)]
    with serving(args, tmp_path / "serve.log") as served:
        his = httpx.Client(base_url=served.base, headers=auth(KEY_A), timeout=120)
        workers = _workers(served, 2)
        first = his.post("/v1/audit", json=prescription("HUP-1")).json()
        original = first["rulebook"]
        assert first["severity"] == "critical"

        edit(rules, CRITICAL, WARNING)
        served.process.send_signal(signal.SIGHUP)
        wait_until(lambda: _counted(served, "reloaded", 2), "both workers reloaded", served.process)
        changed = served.ready()["checks"]["rulebook"]
        assert changed != original
        _all_on(served, workers, changed)
        for n in range(4):  # whichever worker answers
            answer = his.post("/v1/audit", json=prescription(f"HUP-2-{n}")).json()
            assert answer["severity"] == "warning" and answer["rulebook"] == changed

        good = break_rule(rules)
        served.process.send_signal(signal.SIGHUP)
        wait_until(lambda: _counted(served, "failed", 2), "both workers refused the broken rulebook", served.process)
        _all_on(served, workers, changed)
        assert his.post("/v1/audit", json=prescription("HUP-3")).json()["severity"] == "warning"
        assert served.process.poll() is None  # the service lives on

        (rules / RULE).write_text(good.replace(WARNING, CRITICAL), encoding="utf-8")  # back to the original
        called = his.post("/v1/admin/reload", headers=auth(ADMIN))
        assert called.status_code == 200 and called.json()["workers"] == "all", called.text
        assert called.json()["rulebook"] == original
        _all_on(served, workers, original)
        assert his.post("/v1/audit", json=prescription("HUP-4")).json()["severity"] == "critical"
        his.close()
    events = [json.loads(line) for line in served.log_text().splitlines() if '"rulebook_reload"' in line]
    assert {e["outcome"] for e in events} == {"reloaded", "failed"} and {e["worker"] for e in events} == workers
