"""Crash freedom: 100,000 generated prescriptions, messy and hostile, audited in one process.

Fast random generation with a fixed seed (no hypothesis: the point is volume in one process).
The generator draws drugs of the rulebook and unknown names, doses from 0 to 1e308 in every
unit (unconvertible ones included), missing fields, garbage frequencies, routes and forms,
ages by ``age_years`` or ``birth_date`` or neither, eGFR and weight or not, free-text allergies,
duplicate items, empty diagnoses, and now and then a record that is not a prescription at all.

What must hold:

* no exception escapes ``Auditor.audit`` except :class:`PrescriptionError` for invalid input;
* every result is a valid :class:`AuditResult` carrying the rulebook hash, self-consistent
  (its severity is its highest finding's) and serialisable;
* every item naming a drug the rulebook does not know has a ``completeness.unknown_drug``
  finding, and no known drug gets one;
* memory is flat: RSS after the last 50,000 grows < 20 MB versus after the first 50,000.

The audits run in one child process (``run``): a segfault in durable_rules' C code cannot be
caught in Python, and it is reported here with the record that caused it (the generator is
reproducible) instead of killing the test session.
"""

from __future__ import annotations

import gc
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks.generate_rulebook import stable_snapshot
from rx_audit import Auditor, AuditResult, PrescriptionError
from rx_audit.contract import Category, Severity
from tests.conftest import ROOT, RULES

TOTAL = 100_000
SEED = 20250326

UNKNOWN_NAMES = ["中药饮片X", "unknownium", "维生素Z", "复方草药颗粒", "生理盐水", "葡萄糖注射液", "xyz",
                 "阿莫西林克拉维酸钾X", "   ", "0", "药", "DRUG-42", "口服补液盐Ⅲ", "💊", "a" * 300, "null",
                 "metformin extra strength"]
UNITS = ["mg", "g", "ug", "mcg", "μg", "IU", "U", "万单位", "mL", "ml", "L", "片", "粒", "袋", "支", "tablet",
         "capsule", "滴", "揿", "%", "mg/kg", "mmol", "xyz", "丸", "kg", "ng", "MG", " mg "]
STRENGTH_UNITS = ["mg", "g", "ug", "mg/5mL", "mg/mL", "g/100mL", "IU", "万单位", "%", "片", "mg/片", "xyz"]
FREQUENCIES = ["qd", "bid", "tid", "qid", "q4h", "q6h", "q8h", "q12h", "qn", "qod", "qw", "biw", "tiw", "st", "prn",
               "QD", "Bid", "t.i.d.", "每日1次", "每日3次", "每晚1次", "每周1次", "必要时", "立即", "2次/日",
               "每日100次", "q", "garbage", "", " ", "q0h", "1/d", "once", "每", "ｔｉｄ"]
ROUTES = ["po", "口服", "iv", "ivgtt", "静滴", "静推", "im", "肌注", "sc", "皮下", "inh", "吸入", "top", "外用",
          "pr", "sl", "鼻饲", "oph", "nas", "vag", "胃管", "intrathecal", "", "???", "PO ", "静脉注射"]
FORMS = ["片", "tablet", "胶囊", "缓释片", "控释片", "肠溶片", "颗粒", "混悬液", "糖浆", "注射液", "注射用粉针",
         "吸入气雾剂", "乳膏", "栓剂", "滴眼液", "神秘剂型", "", "sustained-release tablet", "powder for injection",
         "?", "cream"]
CODES = ["E11.900", "I10.x00", "J06.9", "I25.1", "N18.4", "K29.700", "E78.5", "R57.000", "O26.9", "E11", "I10",
         "", "ZZZ", "!!!", "e11.9", "E11.1", "N18.5", "I50.1", "J45.9", "Q99.9", "A00", "X"]
ALLERGIES = ["青霉素", "头孢类", "磺胺", "阿司匹林", "海鲜", "喹诺酮", "阿莫西林", "大环内酯类", "无", "", "不详",
             "penicillin", "对青霉素过敏（皮试阳性）", "二甲双胍", "碘造影剂", "x" * 200]
DOSES = [0, 0, 1e-9, 0.001, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 1e6, 1e12, 1e300, 1.7e308]
SEXES = ["M", "F", "U", "男", "女", "m", "female", "", None]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stable_snapshot(RULES, tmp_path_factory.mktemp("crash") / "rules")


@pytest.fixture(scope="module")
def auditor(snapshot: Path) -> Iterator[Auditor]:
    auditor = Auditor.from_path(snapshot)
    yield auditor
    auditor.close()


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _Generator:
    def __init__(self, auditor: Auditor, seed: int):
        self.rng = random.Random(seed)
        book = auditor.rulebook
        self.known: list[str] = []
        for drug in book.drugs.values():
            # Names the rulebook resolves (a name or ATC code two dictionary entries share resolves to
            # neither: it is unknown by design, never a guess).
            self.known.extend(name for name in dict.fromkeys([drug.name, drug.id, *drug.names[:4], *drug.atc])
                              if book.drug_for(name) is not None)
        self.known_atc = {code for drug in book.drugs.values() for code in drug.atc if book.drug_for(code) is not None}
        self.unknown = [name for name in UNKNOWN_NAMES if book.drug_for(name) is None]
        assert len(self.unknown) >= 10, "the unknown-name pool must be unknown to the rulebook"
        self.fresh = 0

    def quantity(self, units: list[str]) -> Any:
        rng = self.rng
        roll = rng.random()
        if roll < 0.02:
            return {"value": -rng.choice(DOSES[2:]), "unit": "mg"}  # invalid: negative
        if roll < 0.03:
            return {"value": 5}  # invalid: no unit
        if roll < 0.04:
            return {"value": "五", "unit": "mg"}  # invalid: not a number
        value = rng.choice(DOSES) if rng.random() < 0.5 else round(rng.uniform(0, 2000), rng.randint(0, 4))
        return {"value": value, "unit": rng.choice(units)}

    def drug_name(self) -> tuple[str, bool]:
        rng = self.rng
        roll = rng.random()
        if roll < 0.72:
            return rng.choice(self.known), True
        if roll < 0.97:
            return rng.choice(self.unknown), False
        self.fresh += 1  # a name never seen: the engine's name cache must stay bounded
        return f"未收录药品{self.fresh}号", False

    def item(self, position: int) -> tuple[dict[str, Any], bool]:
        rng = self.rng
        name, known = self.drug_name()
        item: dict[str, Any] = {"drug": name}
        if rng.random() < 0.85:
            item["id"] = str(position)
        for key, values, chance in (("form", FORMS, 0.85), ("frequency", FREQUENCIES, 0.9), ("route", ROUTES, 0.9)):
            if rng.random() < chance:
                item[key] = rng.choice(values)
        if rng.random() < 0.9:
            item["dose"] = self.quantity(UNITS)
        if rng.random() < 0.35:
            item["strength"] = self.quantity(STRENGTH_UNITS)
        if rng.random() < 0.85:
            item["days"] = rng.choice([0, 1, 3, 7, 14, 30, 84, 90, 365, 1e6, 2.5])
        if rng.random() < 0.05:
            item["quantity"] = {"value": rng.randint(1, 100), "unit": "片"}
        if rng.random() < 0.03:  # an ATC code of the rulebook makes an unknown name known
            item["atc"] = rng.choice(["A10BA02", "C08CA01", "ZZZ", ""])
            known = known or item["atc"] in self.known_atc
        if rng.random() < 0.03:
            item["extra_field"] = {"nested": [1, 2, 3]}
        if rng.random() < 0.01:
            item["drug"] = ""  # invalid
        return item, known

    def patient(self) -> dict[str, Any]:
        rng = self.rng
        patient: dict[str, Any] = {}
        if rng.random() < 0.9:
            patient["sex"] = rng.choice(SEXES)
        roll = rng.random()
        if roll < 0.75:
            patient["age_years"] = rng.choice([0, 0.01, 0.5, 1, 3, 8, 11, 15, 17, 18, 25, 40, 52, 64, 65, 75, 88, 100,
                                               120, 150, rng.uniform(0, 110)])
        elif roll < 0.85:
            patient["birth_date"] = f"{rng.randint(1900, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        elif roll < 0.87:
            patient["age_years"] = rng.choice([-1, 151, "abc"])  # invalid
        if rng.random() < 0.6:
            patient["weight_kg"] = rng.choice([0.3, 2.5, 10, 20, 45, 60, 75, 120, 300, 500])
        if rng.random() < 0.6:
            patient["egfr"] = rng.choice([0, 5, 10, 25, 29.9, 30, 44, 45, 60, 90, 120, 300])
        if rng.random() < 0.4:
            patient["hepatic_impairment"] = rng.choice(["none", "mild", "moderate", "severe"])
        for flag in ("pregnant", "lactating"):
            if rng.random() < 0.3:
                patient[flag] = rng.choice([True, False, None])
        if rng.random() < 0.7:
            patient["allergies"] = rng.sample(ALLERGIES, rng.randint(0, 3))
        return patient

    def record(self, number: int) -> tuple[Any, list[tuple[str, bool]]]:
        """A record and, for each item, (its id in the result, whether its drug is known)."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.003:
            return rng.choice(["not json {", "[]", "null", "42", '"text"', b"\xff\xfe"]), []
        if roll < 0.005:
            return rng.choice([None, [], 42, {"id": "X"}, {"items": []}]), []
        count = rng.choice([1, 1, 1, 1, 2, 2, 2, 3, 3, 6])
        items, expected = [], []
        for position in range(1, count + 1):
            item, known = self.item(position)
            items.append(item)
            expected.append((item.get("id", str(position)), known))
        if rng.random() < 0.05:  # the same drug twice
            duplicate = dict(items[0])
            duplicate["id"] = str(count + 1)
            items.append(duplicate)
            expected.append((duplicate["id"], expected[0][1]))
        record: dict[str, Any] = {"id": f"CRASH-{number:06d}" if rng.random() < 0.99 else number, "items": items}
        if rng.random() < 0.9:
            record["patient"] = self.patient()
        roll = rng.random()
        if roll < 0.15:
            record["diagnoses"] = []
        elif roll < 0.9:
            record["diagnoses"] = [rng.choice([{"code": rng.choice(CODES)}, rng.choice(CODES), {"name": "高血压"}])
                                   for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.8:
            record["visit_type"] = rng.choice(["outpatient", "emergency", "inpatient", "chronic", "outpatient"])
        elif rng.random() < 0.1:
            record["visit_type"] = "home"  # invalid
        if rng.random() < 0.7:
            record["issued_at"] = rng.choice(["2025-03-26T10:15:00+08:00", "2025-03-26", "2020-01-01T00:00:00Z"])
        if rng.random() < 0.5:
            record["facility"] = {"id": "F1", "level": rng.choice(["village", "township", "county", None])}
        if rng.random() < 0.3:
            record["department"] = rng.choice(["全科", "儿科", "", "急诊"])
        if rng.random() < 0.01:
            record["id"] = ""  # invalid
        return record, expected


_THRESHOLD = {"info": 1, "warning": 2, "critical": 3}
_CATEGORIES = {c.value for c in Category}
_SEVERITIES = {s.value for s in Severity}


def _check_result(result: Any, record: dict[str, Any], expected: list[tuple[str, bool]], auditor: Auditor,
                  full: bool) -> None:
    assert isinstance(result, AuditResult)
    assert result.rulebook == auditor.rulebook_hash
    assert result.id == str(record["id"])
    top = 0
    unknown_items = set()
    for finding in result.findings:
        assert finding.category in _CATEGORIES and finding.severity in _SEVERITIES
        assert finding.rule and finding.message and finding.source
        top = max(top, _THRESHOLD[finding.severity])
        if finding.rule == "completeness.unknown_drug":
            unknown_items.add(finding.item)
    assert (_THRESHOLD[result.severity] if result.severity else 0) == top
    threshold = _THRESHOLD[auditor.rulebook.settings.flag_threshold]
    assert result.flagged == (top >= threshold)
    for item_id, known in expected:
        assert (item_id in unknown_items) == (not known), (item_id, known, result.findings)
    data = result.to_contract()
    orjson.dumps(data)
    if full:
        assert AuditResult.model_validate(data) == result


def run(rules: Path, total: int = TOTAL, seed: int = SEED, progress: Path | None = None) -> dict[str, Any]:
    """Audit ``total`` generated records in this process; return counts, problems and RSS."""
    auditor = Auditor.from_path(rules)
    generator = _Generator(auditor, seed)
    counts = {"audited": 0, "invalid": 0, "escaped": 0, "wrong": 0, "findings": 0, "flagged": 0}
    problems: list[str] = []
    rss_half = 0.0
    handle = os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) if progress else None
    for number in range(1, total + 1):
        record, expected = generator.record(number)
        if handle is not None:  # where we are, should the process die in C code
            os.pwrite(handle, f"{number:>9}".encode(), 0)
        try:
            result = auditor.audit(record)
        except PrescriptionError:
            counts["invalid"] += 1
        except Exception as error:  # anything else escaping is what this test looks for
            counts["escaped"] += 1
            if len(problems) < 20:
                problems.append(f"#{number} escaped {type(error).__name__}: {error} <- {str(record)[:400]}")
        else:
            counts["audited"] += 1
            counts["findings"] += len(result.findings)
            counts["flagged"] += result.flagged
            try:
                _check_result(result, record, expected, auditor, full=number % 97 == 0)
            except AssertionError as error:
                counts["wrong"] += 1
                if len(problems) < 20:
                    problems.append(f"#{number} wrong result: {str(error)[:600]} <- {str(record)[:400]}")
        if number == total // 2:
            gc.collect()
            rss_half = _rss_mb()
    gc.collect()
    auditor.close()
    return {"counts": counts, "problems": problems, "rss_half_mb": rss_half, "rss_end_mb": _rss_mb()}


def _child() -> None:
    """Entry point of the child process: ``python -c 'from tests.test_crash_freedom import _child; _child()'``."""
    rules, total, progress = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    print(orjson.dumps(run(rules, total, SEED, progress)).decode())


def test_100k_prescriptions_no_crash_flat_memory(snapshot: Path, tmp_path: Path) -> None:
    """The 100,000 audits run in one child process, so that a crash inside durable_rules' C code
    (a segfault cannot be caught in Python) is reported with the record that caused it instead of
    killing the test session."""
    progress = tmp_path / "progress"
    child = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", "from tests.test_crash_freedom import _child; _child()",
         str(snapshot), str(TOTAL), str(progress)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
    )
    if child.returncode != 0:
        number = int(progress.read_text().strip() or 0) if progress.exists() else 0
        record = "?"
        if number:
            generator = _Generator(Auditor.from_path(snapshot), SEED)
            for n in range(1, number + 1):
                record = generator.record(n)[0]
        pytest.fail(f"the auditing process died (exit {child.returncode}) at record #{number}: {record!r}\n"
                    f"{child.stderr[-3000:]}")
    report = orjson.loads(child.stdout.strip().splitlines()[-1])
    counts, problems = report["counts"], report["problems"]
    assert not problems, f"{counts}\n" + "\n".join(problems)
    # The generator must exercise both paths substantially.
    assert counts["audited"] > TOTAL * 0.5 and counts["invalid"] > TOTAL * 0.05, counts
    growth = report["rss_end_mb"] - report["rss_half_mb"]
    assert growth < 20, f"RSS grew {growth:.1f} MB over the last {TOTAL - TOTAL // 2} audits"


def test_generator_is_reproducible(auditor: Auditor) -> None:
    first, second = _Generator(auditor, SEED), _Generator(auditor, SEED)
    assert repr([first.record(n) for n in range(1, 200)]) == repr([second.record(n) for n in range(1, 200)])


def test_snapshot_is_a_real_rulebook(auditor: Auditor) -> None:
    assert Path(auditor.rulebook.root).is_dir()
    assert len(auditor.rulebook.drugs) >= 5
