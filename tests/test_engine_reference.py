"""Every finding durable_rules gives, and every one it does not, agrees with a direct reading of the rules.

durable_rules stays silent when a field is missing or of the wrong type; these tests are the
proof that no prescription slips through that silence: the engine's findings are compared, both
ways, with ``tests/reference.py``, which applies the YAML rules in plain Python.
"""

from __future__ import annotations

import random

import pytest

from rx_audit.contract import parse_prescription
from tests import generate, reference

# Fields whose "cannot check" twins are compared both ways; item fields (dose, frequency…) also
# have structural findings that legitimately replace the twin, so they are checked one way.
PATIENT_FIELDS = set(reference.PATIENT_OPTIONAL)
STRUCTURAL = {
    "dose": {"completeness.missing.dose", "completeness.unusable.dose"},
    "daily": {"completeness.missing.dose", "completeness.unusable.dose", "completeness.missing.freq",
              "completeness.unusable.freq"},
    "freq": {"completeness.missing.freq", "completeness.unusable.freq"},
    "route": {"completeness.missing.route", "completeness.unusable.route"},
    "form_group": {"completeness.unusable.form"},
    "days": {"completeness.missing.days"},
}


def _primary(result) -> set[tuple[str, str | None]]:
    return {
        (finding.rule, finding.item) for finding in result.findings
        if finding.category != "completeness" or finding.rule == "completeness.unknown_drug"
    }


@pytest.mark.parametrize("seed", range(6))
def test_generated_prescriptions_match_direct_evaluation(seed, auditor, reference_book):
    """500 random prescriptions a seed: the same findings as the reference, none missing, none extra."""
    rng = random.Random(seed)
    for number in range(500):
        record = generate.prescription(rng, auditor.rulebook, seed * 1000 + number)
        prescription = parse_prescription(record)
        result = auditor.audit(prescription)
        expected = reference.evaluate(prescription, reference_book)
        got = _primary(result)
        assert got == expected.fired, (
            f"{record['id']}: engine-only {sorted(got - expected.fired)}, "
            f"reference-only {sorted(expected.fired - got)}\n{record}"
        )
        twins = {(f.item, f.evidence.get("missing")) for f in result.findings if ".missing." in f.rule and f.item}
        structural = {(f.item, f.rule) for f in result.findings}
        for item, field in expected.undecidable:
            replaced = any((item, rule) in structural for rule in STRUCTURAL.get(field, ()))
            assert (item, field) in twins or replaced, (
                f"{record['id']} item {item}: a rule needs {field}, which is missing, and no finding says so\n{record}"
            )
        for item, field in twins:
            if field in PATIENT_FIELDS:
                assert (item, field) in expected.undecidable, (
                    f"{record['id']} item {item}: engine says {field} is missing for a rule that does not apply"
                    f"\n{record}"
                )


def test_every_drug_rule_fires_somewhere(auditor):
    """The rulebook's examples exercise it: each monograph has at least one example that fires one of its rules."""
    fired_by_drug = {
        rule_id.split(".")[0] for example in auditor.rulebook.examples for rule_id in example.expect
    }
    monographs = {drug_id for drug_id, drug in auditor.rulebook.drugs.items() if drug.monograph}
    silent = sorted(monographs - fired_by_drug)
    assert not silent, f"drugs without an example that fires a rule: {silent}"
