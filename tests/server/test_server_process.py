"""``rx-audit serve`` for real: a uvicorn process with two workers on 127.0.0.1 and a free port, on a
SQLite file and on PostgreSQL. The HIS talks HTTP; the pharmacist acts through ``ReviewQueue`` on the
same database. Plus the key helper and the serve command's one-line failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import FACILITY_A, FACILITY_B, KEY_A, KEY_B, ROOT, auth, prescription
from process_support import free_port, wait_until

RX_AUDIT = str(Path(sys.executable).with_name("rx-audit"))
STARTUP_CAP = 300.0  # seconds: a generous cap on a slow machine; the test never measures time


@pytest.fixture
def server(db_url: str, keys_file: Path, tmp_path: Path):
    port = free_port()
    log = open(tmp_path / "server.log", "w+", encoding="utf-8")  # noqa: SIM115 (open while the server runs)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RX_AUDIT_") or k.startswith("RX_AUDIT_TEST")}
    process = subprocess.Popen(
        [RX_AUDIT, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
         "--rules", str(ROOT / "rules"), "--db", db_url, "--keys", str(keys_file)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, "rx-audit serve ready", process, STARTUP_CAP)
        yield base, process, tmp_path / "server.log"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def test_his_round_trip_through_a_real_server(server, db_url):
    from rx_audit import ReviewQueue

    base, process, log_path = server
    his = httpx.Client(base_url=base, headers=auth(KEY_A), timeout=120)
    queue = ReviewQueue(db_url)
    try:
        # 1. a critical prescription is held
        body = his.post("/v1/audit", json=prescription("E2E-1")).json()
        assert body["flagged"] is True and body["severity"] == "critical" and body["review"]["status"] == "pending"
        item_id = int(body["review"]["item"])
        assert his.get("/v1/prescriptions/E2E-1").json()["status"] == "pending"
        # 2. the pharmacist claims and returns it; the HIS sees `returned` (a long poll from `pending`)
        claimed = queue.claim_next("ph01", scope=[FACILITY_A])
        assert claimed is not None and claimed.id == item_id
        queue.return_to_doctor(item_id, "ph01", "R02", "日剂量6g超过4g上限", scope=[FACILITY_A])
        state = his.get("/v1/prescriptions/E2E-1", params={"wait": 60, "since": "claimed"}).json()
        assert state["status"] == "returned" and state["release"] is False
        assert state["decision"]["reason_code"] == "R02" and state["decision"]["by"] == "ph01"
        # 3. the doctor double-signs; the pharmacist approves (critical: reason code and comment)
        signed = his.post("/v1/prescriptions/E2E-1/double-sign", json={"doctor_id": "D011", "reason": "会诊后确认"})
        assert signed.status_code == 200 and signed.json()["status"] == "double_signed"
        again = queue.claim_next("ph01", scope=[FACILITY_A])
        assert again is not None and again.id == item_id
        queue.approve(item_id, "ph01", "A06", "医生双签，短期使用并监测肝功能", scope=[FACILITY_A])
        state = his.get("/v1/prescriptions/E2E-1", params={"wait": 60, "since": "claimed"}).json()
        assert state["status"] == "approved" and state["release"] is True and state["decision"]["reason_code"] == "A06"

        # the other way out of a return: the fixed prescription is a new version, no longer flagged
        first = his.post("/v1/audit", json=prescription("E2E-2")).json()
        queue.claim(int(first["review"]["item"]), "ph02")
        queue.return_to_doctor(int(first["review"]["item"]), "ph02", "R02", "剂量过大")
        assert his.get("/v1/prescriptions/E2E-2").json()["status"] == "returned"
        fixed = his.post("/v1/audit", json=prescription("E2E-2", kind="fixed")).json()
        assert fixed["submission"] == "new_version" and fixed["version"] == 2 and fixed["flagged"] is False
        state = his.get("/v1/prescriptions/E2E-2").json()
        assert state["status"] == "not_flagged" and state["version"] == 2 and state["release"] is True

        # scope and errors over the wire
        assert httpx.get(f"{base}/v1/prescriptions/E2E-1", headers=auth(KEY_B)).status_code == 404
        refused = his.post("/v1/audit", json=prescription("E2E-3", facility=FACILITY_B))
        assert refused.status_code == 403 and refused.headers["content-type"].startswith("application/problem+json")
        assert httpx.get(f"{base}/v1/prescriptions/E2E-1").status_code == 401
        # the two workers' counts, summed whichever worker answers the scrape
        metrics = httpx.get(f"{base}/metrics").text
        for line in ('rx_audit_audits_total{outcome="queued"} 2.0', 'rx_audit_audits_total{outcome="new_version"} 1.0',
                     "rx_audit_queue_depth 0.0"):  # fmt: skip
            assert line in metrics, line
    finally:
        his.close()
        queue.close()

    # graceful stop: SIGTERM ends the workers and the process with status 0
    process.send_signal(signal.SIGTERM)
    assert process.wait(120) == 0
    log = log_path.read_text(encoding="utf-8")
    assert '"route": "/v1/audit"' in log and '"key": "his-a"' in log
    for private in ("P-1080", "王建国", "对乙酰氨基酚", KEY_A, KEY_B):
        assert private not in log


def test_serve_fails_in_one_line(tmp_path, keys_file, db_url):
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RX_AUDIT_DB")}
        command = [RX_AUDIT, "serve", "--port", str(free_port()), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

    missing_keys = serve("--rules", str(ROOT / "rules"), "--db", db_url, "--keys", str(tmp_path / "none.toml"))
    assert missing_keys.returncode == 2 and "keys file" in missing_keys.stderr
    not_migrated = serve("--rules", str(ROOT / "rules"), "--db", f"sqlite:///{tmp_path / 'new.db'}",
                         "--keys", str(keys_file))  # fmt: skip
    assert not_migrated.returncode == 2 and "Traceback" not in not_migrated.stderr
    assert len(not_migrated.stderr.strip().splitlines()) == 1


def test_key_helper_prints_a_key_once_and_its_hash_line(tmp_path):
    from rx_audit.server.auth import KeyRing

    command = [sys.executable, "-m", "rx_audit.server.keys", "new", "--facility", "LZH", "--facility", "LZH-HW"]
    done = subprocess.run([*command, "--id", "lzh-his"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    key = next(line for line in done.stdout.splitlines() if line.startswith("rxk_"))
    block = done.stdout[done.stdout.index("[[key]]") :]
    assert key not in block
    path = tmp_path / "keys.toml"
    path.write_text(block, encoding="utf-8")
    found = KeyRing.load(path).find(key)
    assert found is not None and found.id == "lzh-his" and found.facilities == {"LZH", "LZH-HW"}
    assert KeyRing.load(path).find(key + "x") is None
    bad = subprocess.run([sys.executable, "-m", "rx_audit.server.keys", "new", "--facility", 'a"b'],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_sigterm_finishes_the_requests_already_accepted(tmp_path, keys_file):
    """A long poll in flight when the service is told to stop is answered (200), then the process ends
    (status 0, or by the SIGTERM uvicorn re-raises after its graceful stop with one worker). On SQLite
    only: the stop is uvicorn's, the same on either database."""
    import threading

    from rx_audit import migrate

    db = f"sqlite:///{tmp_path / 'graceful.db'}"
    migrate(db)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RX_AUDIT_") or k.startswith("RX_AUDIT_TEST")}
    with open(tmp_path / "server.log", "w+", encoding="utf-8") as log:
        process = subprocess.Popen(
            [RX_AUDIT, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--max-wait", "8",
             "--rules", str(ROOT / "rules"), "--db", db, "--keys", str(keys_file)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        try:
            def ready() -> bool:
                try:
                    return httpx.get(f"{base}/readyz", timeout=5).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(ready, "rx-audit serve ready", process, STARTUP_CAP)
            assert httpx.post(f"{base}/v1/audit", json=prescription("G-1"), headers=auth(KEY_A), timeout=120).json()[
                "review"]["status"] == "pending"  # fmt: skip
            answers: list[httpx.Response] = []

            def poll() -> None:
                answers.append(httpx.get(f"{base}/v1/prescriptions/G-1", params={"wait": 8, "since": "pending"},
                                         headers=auth(KEY_A), timeout=120))  # fmt: skip

            thread = threading.Thread(target=poll)
            thread.start()

            def in_flight() -> bool:
                text = httpx.get(f"{base}/metrics", timeout=30).text
                return "rx_audit_requests_in_flight 1.0" in text

            wait_until(in_flight, "the long poll is being answered", process, STARTUP_CAP)
            process.send_signal(signal.SIGTERM)
            thread.join(300)
            assert answers and answers[0].status_code == 200 and answers[0].json()["status"] == "pending"
            assert process.wait(120) in (0, -signal.SIGTERM)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
