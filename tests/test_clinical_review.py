"""What the second pharmacist's review needed of the engine: each behaviour pinned on the shipped rulebook.

The rulebook side of each row is in the rule files' own examples (`rx-audit rules test`); these
pin the engine mechanisms those rules rely on, with both a prescription that must be caught and
one that must pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rx_audit import Auditor


def item(drug: str, value: float, unit: str = "mg", frequency: str = "qd", form: str = "片", route: str = "po",
         days: float = 7, item_id: str | None = None, **extra) -> dict:
    entry = {"drug": drug, "form": form, "dose": {"value": value, "unit": unit}, "frequency": frequency,
             "route": route, "days": days, **extra}
    if item_id:
        entry["id"] = item_id
    return entry


def rx(*items: dict, allergies=(), diagnoses=("I48.x00", "M54.500"), **patient) -> dict:
    return {"id": "CR", "patient": {"age_years": 60, "sex": "M", "weight_kg": 70, "egfr": 80,
                                    "allergies": list(allergies), **patient},
            "diagnoses": list(diagnoses), "items": [{**entry, "id": entry.get("id", str(n))}
                                                     for n, entry in enumerate(items, 1)]}


def findings(auditor: Auditor, record: dict) -> dict[str, object]:
    return {finding.rule: finding for finding in auditor.audit(record).findings}


WARFARIN = item("华法林钠片", 3)
METRONIDAZOLE = item("甲硝唑片", 400, frequency="tid", diagnoses=None)


def test_pair_message_names_the_drugs_of_the_rule_whatever_the_order(auditor):
    """Row 1: {a} is the drug of the rule's first selector — 甲硝唑 written before 华法林 must not swap them."""
    record = rx(WARFARIN, item("甲硝唑片", 400, frequency="tid"), diagnoses=("I48.x00", "A59.000"))
    forward = findings(auditor, record)
    record["items"].reverse()
    backward = findings(auditor, record)
    interaction = next(rule for rule in forward if rule.startswith("interaction.") and "metronidazole" in rule)
    assert forward[interaction].message == backward[interaction].message
    assert forward[interaction].evidence["drugs"] == backward[interaction].evidence["drugs"]


@pytest.mark.parametrize(("form", "route", "fires"), [("片", "po", True), ("乳胶剂", "外用", False),
                                                      ("乳膏", "top", False)])
def test_topical_nsaid_does_not_interact_with_warfarin(auditor, form, route, fires):
    """Row 2: warfarin + NSAID is critical for an oral NSAID, nothing for a gel or cream on the skin."""
    record = rx(WARFARIN, item("双氯芬酸钠", 25 if route == "po" else 2, unit="mg" if route == "po" else "g",
                               frequency="tid", form=form, route=route))
    rules = findings(auditor, record)
    assert any(rule.startswith("interaction.warfarin_nsaid") for rule in rules) is fires


def test_frequency_finding_is_not_critical_because_the_regimen_is(tmp_path):
    """Row 3: a critical regimen's frequency check is a warning unless the rule file says otherwise."""
    root = tmp_path / "rules"
    (root / "drugs").mkdir(parents=True)
    (root / "drugs" / "x.yaml").write_text("""drug:
  id: xdrug
  name: 测试药
  forms: {oral_solid: [po]}
  source: 测试说明书
dose:
  - id: adult
    per_day: {max: 100}
    frequencies: [qd]
    severity: critical
    source: 测试说明书【用法用量】
""", encoding="utf-8")
    result = Auditor.from_path(root).audit(rx(item("测试药", 10, frequency="bid")))
    frequency = next(f for f in result.findings if f.rule == "xdrug.dose.adult.frequency")
    assert str(frequency.severity) == "warning"


def test_amoxicillin_allergy_warns_on_cefuroxime_but_does_not_block_it(auditor):
    """Row 4: a penicillin allergy is a cross-reactivity warning on a cephalosporin, not a 禁用."""
    record = rx(item("头孢呋辛酯片", 250, frequency="bid"), allergies=["阿莫西林"], diagnoses=("J01.900",))
    result = auditor.audit(record)
    cefuroxime = [f for f in result.findings if f.rule.startswith("cefuroxime.allergy")]
    assert cefuroxime and all(str(f.severity) == "warning" for f in cefuroxime)
    assert "cefuroxime.allergy" not in {f.rule for f in cefuroxime}


@pytest.mark.parametrize("text", ["青霉素(过敏性休克)", "阿莫西林（皮疹）", "青霉素皮试阳性", "对青霉素类药物过敏",
                                  "Penicillin allergy", "头孢类、青霉素过敏"])
def test_allergy_written_with_its_reaction_still_blocks(auditor, text):
    """HIS add the reaction exactly when it was severe: the allergen is read out of the wording."""
    record = rx(item("阿莫西林胶囊", 500, frequency="tid", form="胶囊"), allergies=[text], diagnoses=("J03.900",))
    result = auditor.audit(record)
    assert "amoxicillin.allergy" in {f.rule for f in result.findings} and str(result.severity) == "critical"


@pytest.mark.parametrize(("text", "said"), [("xyz未知药", True), ("海鲜过敏", False), ("无", False),
                                            ("否认药物过敏史", False)])
def test_allergy_text_that_cannot_be_read_is_said(auditor, text, said):
    """Text naming no drug, class or known food allergen is a completeness finding; 'none' and food are not."""
    record = rx(item("阿莫西林胶囊", 500, frequency="tid", form="胶囊"), allergies=[text], diagnoses=("J03.900",))
    rules = findings(auditor, record)
    assert ("completeness.allergy_unreadable" in rules) is said
    assert "completeness.missing.allergies" not in rules


def test_same_drug_as_tablets_and_eye_drops_is_not_a_duplicate(auditor):
    """Levofloxacin by mouth and in the eye act in different places: no same-ingredient duplicate."""
    record = rx(item("左氧氟沙星片", 500), item("左氧氟沙星滴眼液", 1, unit="滴", form="滴眼液", route="滴眼",
                                                 frequency="qid"), diagnoses=("N39.000", "H10.900"))
    assert "duplicate.same_ingredient" not in findings(auditor, record)
    twice = rx(item("左氧氟沙星片", 500), item("左氧氟沙星片", 500), diagnoses=("N39.000",))
    assert "duplicate.same_ingredient" in findings(auditor, twice)


def test_loading_dose_then_maintenance_is_not_a_duplicate(auditor):
    """Clopidogrel 300 mg st then 75 mg qd is the standard start, not the same drug written twice."""
    record = rx(item("氯吡格雷片", 300, frequency="st", days=1), item("氯吡格雷片", 75), diagnoses=("I21.900",))
    assert "duplicate.same_ingredient" not in findings(auditor, record)


def test_ppi_beside_an_antiplatelet_needs_no_gastric_diagnosis(auditor):
    """Row 18: gastroprotection — a PPI with aspirin is indicated by the aspirin; alone it needs a diagnosis."""
    ppi = item("奥美拉唑肠溶胶囊", 20, form="肠溶胶囊")
    assert "omeprazole.indication" not in findings(auditor, rx(item("阿司匹林肠溶片", 100, form="肠溶片"), ppi,
                                                            diagnoses=("I25.103",)))
    assert "omeprazole.indication" in findings(auditor, rx(ppi, diagnoses=("I25.103",)))


@pytest.mark.parametrize(("name", "drug"), [
    ("阿托伐他汀钙片(立普妥)", "atorvastatin"), ("硝苯地平缓释片(Ⅱ)", "nifedipine"), ("格列齐特片(II)", "gliclazide"),
    ("艾司奥美拉唑镁肠溶片", "esomeprazole"), ("doxycycline hyclate", "doxycycline"),
    ("Metoprolol Tartrate 25 mg tab", "metoprolol"),
    ("阿莫西林胶囊 0.25g*24粒", "amoxicillin"), ("盐酸二甲双胍缓释片 0.5g", "metformin"),
])
def test_names_as_his_write_them_resolve(auditor, name, drug):
    """Brand in brackets, (Ⅱ)/(II), strength and pack, salt words: resolved; a different drug is not guessed."""
    resolved = auditor.rulebook.drug_for(name)
    assert (resolved.id if resolved else None) == drug


def test_review_records_are_present_in_every_shipped_monograph(rules_dir: Path):
    """Every drug file says who reviewed it, when, against what (rules check warns otherwise)."""
    from rx_audit.rulebook import load_rulebook

    assert not [warning for warning in load_rulebook(rules_dir).warnings if "review record" in warning]
