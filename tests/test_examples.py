"""The examples: those written inside the rule files, and the sample prescriptions in examples/."""

from __future__ import annotations

import json

import pytest

from rx_audit.engine.selftest import check_expectation, run_examples
from tests.conftest import EXAMPLES


def test_rule_file_examples_pass(auditor):
    """`rx-audit rules test`: each example fires exactly its expected rules (warning and above)."""
    outcomes = run_examples(auditor)
    assert len(outcomes) >= 100
    failures = [
        f"{o.example.source} {o.example.name}: missing {o.missing}, unexpected {o.unexpected}, error {o.error}"
        for o in outcomes if not o.passed
    ]
    assert not failures, "\n".join(failures)


def _corpus():
    records = [json.loads(line) for line in (EXAMPLES / "prescriptions.jsonl").read_text(encoding="utf-8").splitlines()
               if line.strip()]
    expected = json.loads((EXAMPLES / "expected.json").read_text(encoding="utf-8"))
    return records, expected


def test_corpus_is_large_and_covers_every_category():
    records, expected = _corpus()
    assert len(records) >= 100 and set(expected) == {r["id"] for r in records}
    correct = [rid for rid, rules in expected.items() if not rules]
    assert len(correct) >= 40, "at least 40 ordinary correct prescriptions"


def test_corpus_findings_match_expected(auditor):
    """Correct prescriptions pass; each faulty one gets exactly its expected warning/critical findings."""
    records, expected = _corpus()
    problems = []
    categories = set()
    for record in records:
        result = auditor.audit(record)
        missing, unexpected = check_expectation(result, expected[record["id"]])
        if missing or unexpected:
            problems.append(f"{record['id']}: missing {missing}, unexpected {unexpected}")
        categories |= {f.category for f in result.findings if f.rule in expected[record["id"]]}
        if expected[record["id"]]:
            assert result.flagged or all(
                str(f.severity) == "info" for f in result.findings if f.rule in expected[record["id"]]
            )
    assert not problems, "\n".join(problems)
    assert categories >= {"indication", "dose", "route", "duplicate", "interaction", "contraindication",
                          "duration", "completeness"}


@pytest.mark.parametrize("category", ["indication", "dose", "route", "duplicate", "interaction",
                                      "contraindication", "duration"])
def test_corpus_has_flagged_examples_of(category, auditor):
    records, expected = _corpus()
    hits = 0
    for record in records:
        if not expected[record["id"]]:
            continue
        result = auditor.audit(record)
        hits += any(f.category == category and f.rule in expected[record["id"]] for f in result.findings)
    assert hits >= 2, f"fewer than two sample prescriptions show a {category} problem"
