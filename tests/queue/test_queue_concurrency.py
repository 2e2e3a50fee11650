"""4 processes × 32 threads claim and decide 1,000 items: none claimed twice, none lost (both databases)."""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter

from rx_audit.contract import AuditResult, Finding
from rx_audit.queue import ReviewQueue

ITEMS = 1000
PROCESSES = 4
THREADS = 32


def _seed(url: str) -> None:
    from rx_audit.queue import prepare_record

    records = []
    for n in range(ITEMS):
        severity = ("info", "warning", "critical")[1 + n % 2]
        payload = {"id": f"C{n:05d}", "facility": {"id": f"F{n % 4}"}, "items": [{"drug": "二甲双胍"}]}
        finding = Finding(rule=f"r{n % 7}", category="dose", severity=severity, message="m", source="s:1")
        records.append(
            prepare_record(
                payload,
                AuditResult(id=payload["id"], flagged=True, severity=severity, rulebook="sha256:c", findings=[finding]),
            )
        )
    with ReviewQueue(url) as queue:
        for start in range(0, ITEMS, 250):
            queue.store_prepared(records[start : start + 250], source="his")


def _worker(url: str, index: int, out: multiprocessing.Queue) -> None:
    # 128 threads on 2 cores may queue for the write lock for a long while: the lock timeout is
    # generous so the outcome never depends on the machine's speed.
    queue = ReviewQueue(url, lock_timeout=300)
    claimed: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()

    def run(thread: int) -> None:
        pharmacist = f"p{index}-{thread}"
        try:
            while True:
                item = queue.claim_next(pharmacist, lease_seconds=3600)
                if item is None:
                    return
                with lock:
                    claimed.append(item.id)
                if item.id % 3:
                    queue.approve(item.id, pharmacist, "A01", "已核实")  # half the items are critical
                else:
                    queue.return_to_doctor(item.id, pharmacist, "R02")
        except Exception as error:  # reported to the parent, never swallowed
            failures.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue.close()
    out.put((claimed, failures))


def test_no_double_claim_none_lost(db_url: str) -> None:
    _seed(db_url)
    context = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = context.Queue()
    processes = [context.Process(target=_worker, args=(db_url, i, out)) for i in range(PROCESSES)]
    for process in processes:
        process.start()
    results = [out.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    claimed = [item for ids, _ in results for item in ids]
    failures = [f for _, fs in results for f in fs]
    assert failures == []
    duplicates = [item for item, n in Counter(claimed).items() if n > 1]
    assert duplicates == []
    assert len(claimed) == ITEMS
    with ReviewQueue(db_url) as queue:
        assert queue.count(status=["approved", "returned"]) == ITEMS
        assert queue.count(status=["pending", "claimed"]) == 0
        stats = queue.statistics()
        assert stats["decided"] == ITEMS
        assert sum(1 for _ in claimed) == ITEMS
        # exactly one claim per item in the trail
        from sqlalchemy import text

        with queue._engine.connect() as connection:
            claims = connection.execute(
                text(
                    "SELECT item_id, count(*) FROM rx_audit_trail WHERE action = 'claim' "
                    "GROUP BY item_id HAVING count(*) > 1"
                )
            ).all()
        assert claims == []
        # 128 concurrent writers, one hash chain: every link intact
        verified = queue.verify()
        assert verified.ok, verified.message
