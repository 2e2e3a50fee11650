"""Threads and hot reload: concurrent audits equal a serial run; a reload is atomic per audit.

* 6 threads auditing the same prescriptions concurrently produce exactly the serial results.
* Hot reload swapped in while 4 threads audit: every result carries the old or the new
  rulebook hash and equals the serial result *of that version* (the new version halves one
  dose limit, so a probe prescription is flagged by the new version only).
* A broken rulebook on reload raises ``RulebookError`` and the old version stays live, also
  for the threads auditing meanwhile.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.generate_rulebook import stable_snapshot
from rx_audit import Auditor, RulebookError
from rx_audit.rulebook import load_yaml, strip_lines
from tests.conftest import RULES
from tests.generate import prescription

THREADS = 6


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two versions of a stable rulebook snapshot: ``old`` and ``new`` (one per-dose limit halved)."""
    old = stable_snapshot(RULES, tmp_path_factory.mktemp("old") / "rules")
    book = Auditor.from_path(old)
    try:
        rulebook = book.rulebook
        candidates = sorted(
            (rule for rule in rulebook.rules.values()
             if rule.drug and rule.id == f"{rule.drug}.dose.adult.per_dose" and "limit" in rule.limits),
            key=lambda rule: (rule.drug != "metformin", rule.drug),
        )
        assert candidates, "the rulebook needs one drug with an adult per-dose limit"
        rule = candidates[0]
        drug = rulebook.drugs[rule.drug]
        limit = rule.limits["limit"]
    finally:
        book.close()

    new = stable_snapshot(old, tmp_path_factory.mktemp("new") / "rules")
    path = new / drug.path.split("/", 1)[1]
    raw = strip_lines(load_yaml(path))
    regimen = next(r for r in raw["dose"] if r["id"] == "adult")
    regimen["per_dose"]["max"] = limit / 2
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")

    form = next(iter(drug.forms))
    probe = {
        "id": "PROBE", "patient": {"sex": "M", "age_years": 50, "egfr": 90, "weight_kg": 70, "allergies": [],
                                   "hepatic_impairment": "none"},
        "diagnoses": [],
        "items": [{"id": "1", "drug": drug.name, "form": {"oral_solid": "片"}.get(form, form),
                   "dose": {"value": limit * 0.75, "unit": drug.unit}, "frequency": "qd",
                   "route": drug.forms[form][0], "days": 3}],
    }
    return {"old": old, "new": new, "rule": rule.id, "probe": probe}


@pytest.fixture
def live(versions: dict[str, Any]) -> Iterator[Auditor]:
    auditor = Auditor.from_path(versions["old"])
    yield auditor
    auditor.close()


def _records(auditor: Auditor, count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [prescription(rng, auditor.rulebook, number) for number in range(count)]


def _dump(result: Any) -> dict[str, Any]:
    return result.model_dump()


def test_threads_equal_serial(live: Auditor) -> None:
    records = _records(live, 300, seed=11)
    serial = {record["id"]: _dump(live.audit(record)) for record in records}

    def worker(seed: int) -> list[tuple[str, dict[str, Any]]]:
        order = list(records)
        random.Random(seed).shuffle(order)
        return [(record["id"], _dump(live.audit(record))) for record in order]

    with ThreadPoolExecutor(THREADS) as pool:
        runs = list(pool.map(worker, range(THREADS)))
    assert sum(len(run) for run in runs) == THREADS * len(records)
    for run in runs:
        for record_id, result in run:
            assert result == serial[record_id], record_id


def test_threads_equal_serial_batches(live: Auditor) -> None:
    records = _records(live, 300, seed=12)
    serial = [_dump(result) for result in live.audit_batch(records)]
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda _: [_dump(r) for r in live.audit_batch(records)], range(4)))
    assert all(run == serial for run in runs)


class _Auditing:
    """Threads auditing ``records`` in a loop until stopped; every result kept with its record id."""

    def __init__(self, auditor: Auditor, records: list[dict[str, Any]], threads: int = 4):
        self.auditor, self.records = auditor, records
        self.stop = threading.Event()
        self.results: list[list[tuple[str, Any]]] = [[] for _ in range(threads)]
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def _run(self, number: int) -> None:
        rng = random.Random(number)
        try:
            while not self.stop.is_set():
                record = rng.choice(self.records)
                self.results[number].append((record["id"], self.auditor.audit(record)))
        except BaseException as error:  # reported by the test
            self.errors.append(error)

    def __enter__(self) -> _Auditing:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def all(self) -> list[tuple[str, Any]]:
        return [entry for results in self.results for entry in results]

    def wait_for_more(self, count: int = 40, rulebook: str | None = None) -> None:
        """Until ``count`` more audits (and a PROBE) finished, on ``rulebook`` if given: a window of work,
        not of time, so the test means the same on a fast machine and on a busy one."""
        def done() -> tuple[int, int]:
            entries = [(rid, r) for rid, r in self.all() if rulebook is None or r.rulebook == rulebook]
            return len(entries), sum(rid == "PROBE" for rid, _ in entries)

        start_total, start_probes = done()
        deadline = time.monotonic() + 600  # a cap against a hang, never reached by a working engine
        while time.monotonic() < deadline and not self.errors:
            total, probes = done()
            if total - start_total >= count and probes > start_probes:
                return
            time.sleep(0.01)
        raise AssertionError(f"auditing threads stalled: {self.errors or 'no progress'}")


def test_hot_reload_under_load(live: Auditor, versions: dict[str, Any]) -> None:
    records = [versions["probe"], *_records(live, 150, seed=13)]
    old_hash = live.rulebook_hash
    expected = {old_hash: {r["id"]: _dump(live.audit(r)) for r in records}}
    new_hash = live.reload(versions["new"])
    assert new_hash != old_hash and live.rulebook_hash == new_hash
    expected[new_hash] = {r["id"]: _dump(live.audit(r)) for r in records}
    live.reload(versions["old"])
    rule = versions["rule"]
    # The probe is what the version change is about: flagged by the new version only.
    assert rule not in {f["rule"] for f in expected[old_hash]["PROBE"]["findings"]}
    assert rule in {f["rule"] for f in expected[new_hash]["PROBE"]["findings"]}

    with _Auditing(live, records) as auditing:
        current = old_hash
        for version in ("new", "old", "new", "old", "new", "old"):
            auditing.wait_for_more(rulebook=current)
            current = live.reload(versions[version])
            assert current in expected
        auditing.wait_for_more(rulebook=current)
    assert not auditing.errors, auditing.errors
    results = auditing.all()
    seen = {result.rulebook for _, result in results}
    assert seen == {old_hash, new_hash}, "both versions must have audited while reloads were swapped in"
    for record_id, result in results:
        assert result.rulebook in expected, result.rulebook
        assert _dump(result) == expected[result.rulebook][record_id], (record_id, result.rulebook)
    probes = [result for record_id, result in results if record_id == "PROBE"]
    assert probes and all((rule in {f.rule for f in r.findings}) == (r.rulebook == new_hash) for r in probes)


def _broken(versions: dict[str, Any], tmp_path: Path, how: str) -> Path:
    broken = stable_snapshot(versions["old"], tmp_path / "rules")
    drug_file = sorted((broken / "drugs").glob("*.yaml"))[0]
    if how == "syntax":
        drug_file.write_text(drug_file.read_text(encoding="utf-8") + "\n  bad: [unclosed\n", encoding="utf-8")
    else:  # schema: a route that does not exist
        raw = strip_lines(load_yaml(drug_file))
        raw["drug"]["forms"] = {"oral_solid": ["teleport"]}
        drug_file.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return broken


@pytest.mark.parametrize("how", ["syntax", "schema"])
def test_broken_reload_keeps_old_version(live: Auditor, versions: dict[str, Any], tmp_path: Path, how: str) -> None:
    broken = _broken(versions, tmp_path, how)
    records = [versions["probe"], *_records(live, 100, seed=14)]
    old_hash = live.rulebook_hash
    expected = {r["id"]: _dump(live.audit(r)) for r in records}
    with _Auditing(live, records) as auditing:
        auditing.wait_for_more()
        with pytest.raises(RulebookError) as raised:
            live.reload(broken)
        assert Path(str(raised.value.path or "")).name.endswith(".yaml")
        with pytest.raises(RulebookError):
            live.reload(tmp_path / "no-such-rulebook")
        auditing.wait_for_more()
    assert not auditing.errors, auditing.errors
    assert live.rulebook_hash == old_hash
    results = auditing.all()
    assert results
    assert all(_dump(result) == expected[record_id] for record_id, result in results)
    assert all(_dump(live.audit(r)) == expected[r["id"]] for r in records)
