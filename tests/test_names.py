"""Drug names as Chinese HIS write them resolve to the right ingredients — and a wrong drug is never guessed.

`tests/data/his_names.csv`: 558 names written from HIS habits (salt, form, 规格, brand in brackets,
(Ⅱ), manufacturer, pack, 中成药, supplies, made-up names), each with its expected ingredients,
written without looking at the dictionary. The measured share is pinned as a floor so it only
goes up; a wrong drug is never acceptable.
"""

from __future__ import annotations

import csv

from tests.conftest import ROOT

NAMES = ROOT / "tests" / "data" / "his_names.csv"


def _outcome(rulebook, name: str, expected: str) -> str:
    drug = rulebook.drug_for(name)
    if expected == "none":
        return "right" if drug is None else "wrong"
    if drug is None:
        return "unresolved"
    if expected == "supply":
        return "right" if drug.kind == "supply" else "wrong"
    return "right" if set(drug.ingredients or (drug.id,)) == set(expected.split("+")) else "wrong"


def test_his_names_resolve_and_none_is_guessed(auditor):
    rows = list(csv.DictReader(NAMES.open(encoding="utf-8")))
    outcomes = {row["name"]: _outcome(auditor.rulebook, row["name"], row["expected"]) for row in rows}
    wrong = sorted(name for name, outcome in outcomes.items() if outcome == "wrong")
    right = sum(outcome == "right" for outcome in outcomes.values())
    assert len(rows) >= 500
    assert not wrong, f"resolved to the wrong drug: {wrong}"
    assert right / len(rows) >= 0.995, f"{right}/{len(rows)} resolved"
