"""kill -9 of a real ``rx-audit serve --workers 2`` while POST /v1/audit requests are in flight, on SQLite
and PostgreSQL: every request answered 2xx is in the database exactly once after a restart (one
stored version, found by GET and by ``ReviewQueue.search``; sent again it is a repeat), and the webhook
events still pending at the kill are delivered by the restarted service to a local receiver.

The kill moment is chosen by count — when the KILL_AT-th answer has come back — never by time."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
from conftest import FACILITY_A, KEY_A, auth, prescription
from process_support import serving, start, stop, wait_until
from test_server_webhooks import SECRET, Receiver

from rx_audit import ReviewQueue

CLIENTS = 8
TOTAL = 160  # prescriptions offered; the kill comes long before they are all sent
KILL_AT = 40  # answers received when the whole service (supervisor and workers) is SIGKILLed


def _records() -> list[dict[str, Any]]:
    return [prescription(f"K9-{n:03d}", kind="clean" if n % 3 == 0 else "critical") for n in range(TOTAL)]


def _load_and_kill(base: str, process_group: int, records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """CLIENTS threads post the records; the thread that receives the KILL_AT-th answer SIGKILLs the
    process group. Returns the 2xx answers by id (answers that raced the kill included)."""
    lock = threading.Lock()
    pending = iter(records)
    answered: dict[str, dict[str, Any]] = {}
    killed = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=base, headers=auth(KEY_A), timeout=120) as his:
            while not killed.is_set():
                with lock:
                    record = next(pending, None)
                if record is None:
                    return
                try:
                    response = his.post("/v1/audit", json=record)
                except httpx.HTTPError:
                    continue  # in flight at the kill: no answer, no promise
                with lock:
                    if 200 <= response.status_code < 300:
                        answered[record["id"]] = response.json()
                    if len(answered) >= KILL_AT and not killed.is_set():
                        os.killpg(process_group, signal.SIGKILL)
                        killed.set()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert killed.is_set(), "the service was never killed"
    return answered


def _held_events(base: str, queue: ReviewQueue, receiver: Receiver) -> list[str]:
    """Three prescriptions returned by the pharmacist while the HIS's receiver fails (503): three webhook
    events, each tried once and still pending."""
    with httpx.Client(base_url=base, headers=auth(KEY_A), timeout=120) as his:
        registered = his.put("/v1/webhooks", json={"url": receiver.url, "secret": SECRET})
        assert registered.status_code == 200, registered.text
        for n in range(3):
            body = his.post("/v1/audit", json=prescription(f"K9-WH-{n}")).json()
            item = int(body["review"]["item"])
            queue.claim(item, "ph01")
            queue.return_to_doctor(item, "ph01", "R02", "日剂量超过4g", scope=[FACILITY_A])
    events = queue.webhook_events([FACILITY_A])
    assert len(events) == 3

    def tried() -> bool:
        now = queue.webhook_events([FACILITY_A])
        return all(e["status"] == "pending" and e["attempts"] >= 1 for e in now)

    wait_until(tried, "each webhook event tried once against the failing receiver")
    return sorted(e["event_id"] for e in events)


def test_kill_9_loses_no_answered_audit_and_pending_webhooks_resume(db_url: str, keys_file: Path, tmp_path: Path):
    """Every 2xx answer before the SIGKILL is stored exactly once; pending webhooks resume after restart."""
    args = ["--workers", "2", "--db", db_url, "--keys", str(keys_file)]
    queue = ReviewQueue(db_url)
    receiver = Receiver(statuses=[503] * 10_000)
    records = _records()
    try:
        served = start(args, tmp_path / "serve-1.log")
        try:
            event_ids = _held_events(served.base, queue, receiver)
            answered = _load_and_kill(served.base, served.process.pid, records)
            assert served.process.wait(60) == -signal.SIGKILL
        finally:
            stop(served)
        assert len(answered) >= KILL_AT

        receiver.statuses.clear()  # the HIS is back: 200 from now on
        with serving(args, tmp_path / "serve-2.log") as again, \
                httpx.Client(base_url=again.base, headers=auth(KEY_A), timeout=120) as his:  # fmt: skip
            for rx_id, answer in answered.items():
                state = his.get(f"/v1/prescriptions/{rx_id}")
                assert state.status_code == 200, (rx_id, state.text)
                assert state.json()["version"] == 1 == answer["version"]
                assert state.json()["status"] == ("pending" if answer["flagged"] else "not_flagged")
                hits = queue.search(prescription_id=rx_id, scope=[FACILITY_A], limit=10)
                assert [(h.prescription_id, h.version) for h in hits] == [(rx_id, 1)]
            for record in records:  # the HIS retries everything: the answered ones are repeats, none a new version
                again_answer = his.post("/v1/audit", json=record)
                assert again_answer.status_code == 200, again_answer.text
                body = again_answer.json()
                assert body["version"] == 1
                if record["id"] in answered:
                    assert body["submission"] == "repeat", record["id"]

            def delivered() -> bool:
                got = {r["event_id"] for r in receiver.received if r["signed"]}
                done = {e["event_id"] for e in queue.webhook_events([FACILITY_A], status="delivered")}
                return set(event_ids) <= got and set(event_ids) <= done

            wait_until(delivered, "the pending webhook events delivered after the restart", again.process)
    finally:
        receiver.close()
        queue.close()
