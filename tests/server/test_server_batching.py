"""The group commit of POST /v1/audit: submissions waiting together are stored in one transaction,
each answered with its own outcome; a bad record fails alone; nothing waiting is lost on close."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from conftest import FACILITY_A, prescription

from rx_audit import QueueError
from rx_audit.server.batching import SubmitBatcher


def _audited(auditor: Any, kind: str, rx_id: str) -> tuple[dict[str, Any], Any]:
    record = prescription(rx_id, FACILITY_A, kind=kind)
    return record, auditor.audit(record)


def test_submit_many_answers_each_record_and_a_bad_one_fails_alone(auditor, queue) -> None:
    """One transaction for three prescriptions, a repeat and a result of another id: in order, a
    Submission or that record's own error; the flagged one is queued, the clean one is not."""
    critical, clean = _audited(auditor, "critical", "GC-1"), _audited(auditor, "clean", "GC-2")
    stranger = (prescription("GC-3", FACILITY_A), clean[1])  # GC-2's result for GC-3
    outcomes = queue.submit_many([critical, clean, critical, stranger])
    assert [getattr(o, "kind", None) for o in outcomes[:3]] == ["stored", "stored", "repeat"]
    assert outcomes[0].item is not None and outcomes[0].item.status == "pending"
    assert outcomes[1].item is None and not outcomes[1].flagged
    assert outcomes[2].item is not None and outcomes[2].item.id == outcomes[0].item.id
    assert isinstance(outcomes[3], QueueError)
    assert queue.search(prescription_id="GC-3") == []
    assert len(queue.search(prescription_id="GC-1")) == 1


def test_concurrent_submissions_through_the_writer_are_each_stored_once(auditor, queue) -> None:
    """8 threads submit 40 prescriptions (and each a second time) through one writer thread: every
    future answers its own prescription, repeats are repeats, every flagged one is queued once."""
    batcher = SubmitBatcher(queue)
    audited = [_audited(auditor, "critical" if n % 2 else "clean", f"GW-{n:02d}") for n in range(40)]
    answers: dict[tuple[str, int], Any] = {}
    lock = threading.Lock()

    def send(offset: int) -> None:
        for round_ in range(2):
            for record, result in audited[offset::8]:
                submission = batcher.submit_future(record, result).result(timeout=120)
                with lock:
                    answers[(record["id"], round_)] = submission

    threads = [threading.Thread(target=send, args=(offset,)) for offset in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batcher.close()
    for record, result in audited:
        first, second = answers[(record["id"], 0)], answers[(record["id"], 1)]
        assert first.prescription_id == second.prescription_id == record["id"]
        assert (first.kind, second.kind) == ("stored", "repeat")
        assert first.flagged == second.flagged == result.flagged
    flagged = [record["id"] for record, result in audited if result.flagged]
    assert flagged and all(len(queue.search(prescription_id=rx_id)) == 1 for rx_id in flagged)


def test_close_stores_what_is_waiting_and_refuses_what_comes_after(auditor, queue) -> None:
    """Graceful stop: submissions accepted before close are stored; a later one is refused."""
    batcher = SubmitBatcher(queue)
    futures = [batcher.submit_future(*_audited(auditor, "critical", f"GS-{n}")) for n in range(5)]
    batcher.close()
    assert [future.result(timeout=0).kind for future in futures] == ["stored"] * 5
    with pytest.raises(RuntimeError):
        batcher.submit_future(*_audited(auditor, "clean", "GS-late"))
