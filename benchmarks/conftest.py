"""Fixtures of the benchmarks: rulebooks (a stable snapshot, a generated large one) and a realistic mix.

Run from the repository root:

    .venv/bin/pytest benchmarks/bench_audit.py --benchmark-only

``benchmarks/pytest.ini`` makes this folder its own pytest root (``python_files = bench_*.py``), so
the test suite (``testpaths = tests``) never collects it. Environment:

* ``RX_BENCH_RULES``: the rulebook to snapshot (default: ``rules/`` of this repository);
* ``RX_BENCH_BIG_DRUGS``: the size of the generated rulebook (default 2000);
* ``RX_BENCH_CPU``: the CPU the process is pinned to (default 0; ``none`` to leave it free).
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from generate_rulebook import ROOT, generate_rulebook, stable_snapshot

from rx_audit import Auditor
from rx_audit.rulebook import Rulebook

RULES = Path(os.environ.get("RX_BENCH_RULES", ROOT / "rules"))
BIG_DRUGS = int(os.environ.get("RX_BENCH_BIG_DRUGS", "2000"))
BATCH = 2000  # prescriptions per throughput round

FORM_TEXT = {
    "oral_solid": ["片", "tablet", "胶囊", "capsule"], "oral_liquid": ["口服溶液", "糖浆"],
    "injection": ["注射液", "注射用粉针"], "inhalation": ["吸入气雾剂"], "topical": ["乳膏"],
    "rectal": ["栓剂"], "ophthalmic": ["滴眼液"], "nasal": ["鼻喷雾剂"],
}
RELEASE_TEXT = {"sustained": "缓释片", "controlled": "控释片", "enteric": "肠溶片"}
ROUTE_TEXT = {"po": ["po", "口服"], "iv": ["iv", "静推"], "ivgtt": ["ivgtt", "静滴"], "im": ["im", "肌注"],
              "sc": ["sc", "皮下"], "inh": ["inh", "吸入"], "top": ["top", "外用"]}
FREQUENCY_TEXT = {"qd": ["qd", "QD", "每日1次"], "bid": ["bid", "BID", "每日2次"], "tid": ["tid", "每日3次"],
                  "qid": ["qid", "每日4次"], "qn": ["qn", "每晚1次"]}
TIMES = {"qd": 1, "bid": 2, "tid": 3, "qid": 4, "qn": 1, "q8h": 3, "q12h": 2, "q6h": 4, "qw": 1 / 7, "qod": 0.5}
ITEM_COUNTS = ([1] * 30) + ([2] * 30) + ([3] * 20) + ([4] * 12) + ([5] * 8)


def pin_cpu() -> str:
    """Pin the process to one CPU so "per core" means one core; returns what was done."""
    wanted = os.environ.get("RX_BENCH_CPU", "0")
    if wanted.lower() == "none" or not hasattr(os, "sched_setaffinity"):
        return "unpinned"
    os.sched_setaffinity(0, {int(wanted)})
    return f"cpu{wanted}"


def rss_mb() -> float:
    """Resident set size of this process in MiB (/proc/self/statm)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def percentile(data: list[float], q: float) -> float:
    ordered = sorted(data)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median_time(fn: Callable[[], Any], rounds: int = 5) -> float:
    """Median wall time of ``rounds`` calls (used for the floor and ratios measured alongside)."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- a realistic mix -----------------------------------------------------------------------------


def _drug_profile(book: Rulebook, drug_id: str) -> dict[str, Any]:
    """What a correct adult order of the drug looks like, read from its compiled rules."""
    rules = {rule.id: rule for rule in book.rules.values() if rule.drug == drug_id and rule.missing_field is None}
    regimen = next((r.limits["regimen"] for r in rules.values() if ".dose." in r.id and "regimen" in r.limits
                    and r.limits["regimen"] in ("adult", "adult_normal")), None)
    per_dose = rules.get(f"{drug_id}.dose.{regimen}.per_dose")
    per_day = rules.get(f"{drug_id}.dose.{regimen}.per_day")
    frequency = rules.get(f"{drug_id}.dose.{regimen}.frequency")
    allowed = [f for f in (frequency.limits["allowed"] if frequency else ["qd", "bid", "tid"]) if f in TIMES]
    indication = rules.get(f"{drug_id}.indication")
    return {
        "per_dose": per_dose.limits["limit"] if per_dose else None,
        "per_day": per_day.limits["limit"] if per_day else None,
        "frequencies": allowed or ["qd"],
        "codes": indication.limits["codes"] if indication else [],
    }


def realistic_prescription(rng: random.Random, book: Rulebook, number: int, drug_ids: list[str],
                           profiles: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A county outpatient prescription: 1–5 distinct drugs, ordinary adult doses, matching diagnoses.

    About one in ten carries one ordinary error (a doubled dose, a diagnosis left out), so the
    mix has findings to explain as real traffic does.
    """
    count = min(rng.choice(ITEM_COUNTS), len(drug_ids))
    chosen = rng.sample(drug_ids, count)
    error = rng.random() < 0.1
    items, codes = [], []
    for position, drug_id in enumerate(chosen, start=1):
        drug, profile = book.drugs[drug_id], profiles[drug_id]
        frequency = rng.choice(profile["frequencies"])
        cap = [limit for limit in (profile["per_dose"], (profile["per_day"] or 0) / TIMES[frequency] or None)
               if limit]
        dose = round(min(cap) * rng.choice([0.25, 0.5, 0.5, 1]), 3) if cap else 1
        group = next(iter(drug.forms))
        route = drug.forms[group][0]
        item: dict[str, Any] = {
            "id": str(position), "drug": rng.choice([drug.name, *drug.names[:3]]),
            "form": rng.choice(FORM_TEXT.get(group, ["片"])),
            "dose": {"value": dose, "unit": drug.unit},
            "frequency": rng.choice(FREQUENCY_TEXT.get(frequency, [frequency])),
            "route": rng.choice(ROUTE_TEXT.get(route, [route])),
            "days": rng.choice([3, 5, 7, 7, 7]),
        }
        if group == "oral_solid" and drug.unit == "mg" and rng.random() < 0.3 and dose >= 1:
            item["strength"] = {"value": dose, "unit": "mg"}
            item["dose"] = {"value": 1, "unit": rng.choice(["片", "粒"])}
        if error and position == 1:
            item["dose"] = {"value": dose * 3, "unit": drug.unit}
            item.pop("strength", None)
        items.append(item)
        if profile["codes"] and not (error and position == 2):
            code = rng.choice(profile["codes"])
            codes.append(code + ".900" if len(code) == 3 and rng.random() < 0.5 else code)
    sex = rng.choice(["M", "F"])
    age = rng.choice([rng.randint(18, 64), rng.randint(18, 64), rng.randint(65, 90)])
    patient: dict[str, Any] = {"id": f"P{number}", "sex": sex, "age_years": age, "allergies": []}
    if rng.random() < 0.7:
        patient["weight_kg"] = rng.choice([48, 55, 62, 70, 78, 90])
    if rng.random() < 0.6:
        patient["egfr"] = rng.choice([95, 88, 76, 64, 58]) if age < 75 else rng.choice([70, 55, 48])
    if rng.random() < 0.7:
        patient["hepatic_impairment"] = "none"
    if sex == "F":
        patient["pregnant"] = False
        patient["lactating"] = False
    if rng.random() < 0.08:
        patient["allergies"] = [rng.choice(["青霉素", "磺胺", "头孢类"])]
    return {
        "id": f"BENCH-{number:06d}", "issued_at": "2025-03-26T10:15:00+08:00",
        "visit_type": "outpatient", "facility": {"id": "LZH", "level": "township"},
        "prescriber": {"id": f"D{rng.randint(1, 30):03d}"}, "department": "全科",
        "patient": patient, "diagnoses": [{"code": code} for code in dict.fromkeys(codes)], "items": items,
    }


def realistic_mix(book: Rulebook, count: int, seed: int = 2025, drug_ids: list[str] | None = None) -> list[dict]:
    rng = random.Random(seed)
    # Drugs with a monograph: their dose profiles make ordinary doses (dictionary-only drugs have none).
    ids = sorted(drug_ids if drug_ids is not None else (d.id for d in book.drugs.values() if d.monograph))
    profiles = {drug_id: _drug_profile(book, drug_id) for drug_id in ids}
    return [realistic_prescription(rng, book, number, ids, profiles) for number in range(1, count + 1)]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def pinned() -> str:
    return pin_cpu()


@pytest.fixture(scope="session", autouse=True)
def fresh_parse_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty parse cache for the session, so a "cold" load is cold on any machine (the generated
    rulebook is the same bytes every run: ~/.cache would make a second run's cold load warm)."""
    folder = tmp_path_factory.mktemp("parse-cache")
    os.environ["RX_AUDIT_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def snapshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stable_snapshot(RULES, tmp_path_factory.mktemp("bench") / "rules")


@pytest.fixture(scope="session")
def small_auditor(snapshot_dir: Path) -> Auditor:
    return Auditor.from_path(snapshot_dir)


@pytest.fixture(scope="session")
def mix(small_auditor: Auditor) -> list[dict[str, Any]]:
    return realistic_mix(small_auditor.rulebook, BATCH)


@pytest.fixture(scope="session")
def big_dir(snapshot_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_rulebook(snapshot_dir, tmp_path_factory.mktemp("bench-big") / "rules", drugs=BIG_DRUGS)
