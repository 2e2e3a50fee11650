"""Opening the queue while pharmacists decide: no DDL on open, so no deadlock (both databases).

Before migrations every ``ReviewQueue()`` ran ``CREATE OR REPLACE TRIGGER`` on PostgreSQL, which
deadlocked with live decisions (11 of 30 opens and 21 of ≈1,000 approvals failed with
DeadlockDetected). Here 3 processes open the queue 12 times each (36 opens, each reading the
statistics) while 2 processes claim and decide 300 items; every open and every decision must
succeed, and the trail must still verify. The outcome does not depend on how the two overlap.
"""

from __future__ import annotations

import multiprocessing

from rx_audit.contract import AuditResult, Finding
from rx_audit.queue import ReviewQueue, prepare_record

ITEMS = 300
OPENERS = 3
OPENS = 12
DECIDERS = 2


def _seed(url: str) -> None:
    records = []
    for n in range(ITEMS):
        payload = {"id": f"O{n:05d}", "facility": {"id": f"F{n % 3}"}, "items": [{"drug": "二甲双胍"}]}
        finding = Finding(rule="r", category="dose", severity="warning", message="m", source="s:1")
        result = AuditResult(
            id=payload["id"], flagged=True, severity="warning", rulebook="sha256:o", findings=[finding]
        )
        records.append(prepare_record(payload, result))
    with ReviewQueue(url) as queue:
        queue.store_prepared(records, source="his")


def _opener(url: str, out: multiprocessing.Queue) -> None:
    failures = []
    for _ in range(OPENS):
        try:
            with ReviewQueue(url, lock_timeout=60) as queue:
                queue.statistics()
                queue.count(status="pending")
        except Exception as error:  # reported to the parent, never swallowed
            failures.append(f"open: {type(error).__name__}: {error}")
    out.put(("open", OPENS, failures))


def _decider(url: str, index: int, out: multiprocessing.Queue) -> None:
    failures, decided = [], 0
    with ReviewQueue(url, lock_timeout=60) as queue:
        while True:
            try:
                item = queue.claim_next(f"ph{index}")
                if item is None:
                    break
                if item.id % 2:
                    queue.approve(item.id, f"ph{index}", "A01")
                else:
                    queue.return_to_doctor(item.id, f"ph{index}", "R02")
                decided += 1
            except Exception as error:
                failures.append(f"decide: {type(error).__name__}: {error}")
                if len(failures) > 20:
                    break
    out.put(("decide", decided, failures))


def test_open_while_deciding_never_deadlocks(db_url: str) -> None:
    _seed(db_url)
    context = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = context.Queue()
    processes = [context.Process(target=_decider, args=(db_url, i, out)) for i in range(DECIDERS)]
    processes += [context.Process(target=_opener, args=(db_url, out)) for _ in range(OPENERS)]
    for process in processes:
        process.start()
    results = [out.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    failures = [failure for _, _, fs in results for failure in fs]
    assert failures == []  # in particular no DeadlockDetected, on open or on decide
    assert sum(n for kind, n, _ in results if kind == "open") == OPENERS * OPENS
    assert sum(n for kind, n, _ in results if kind == "decide") == ITEMS
    with ReviewQueue(db_url) as queue:
        assert queue.count(status=["approved", "returned"]) == ITEMS
        assert queue.verify().ok
