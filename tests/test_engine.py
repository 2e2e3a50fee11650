"""The audit on the shipped rulebook: each review category caught, ordinary prescriptions passed."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from rx_audit import AuditResult, PrescriptionError, RecordError


def rx(*items, patient=None, diagnoses=("E11.900",), visit_type="outpatient", **extra):
    """A prescription with complete patient data, so only the problem under test can fire."""
    base_patient = {"id": "P1", "sex": "M", "age_years": 56, "weight_kg": 68, "egfr": 88,
                    "hepatic_impairment": "none", "allergies": []}
    base_patient.update(patient or {})
    return {"id": "RX-T", "visit_type": visit_type, "issued_at": "2025-03-26T10:15:00+08:00",
            "facility": {"id": "LZH", "name": "凉州户镇分院", "level": "township"},
            "prescriber": {"id": "D007"}, "department": "全科", "patient": base_patient,
            "diagnoses": [{"code": code} for code in diagnoses], "items": list(items), **extra}


def item(drug, value, unit="mg", frequency="qd", route="po", days=7, form="片", **extra):
    return {"drug": drug, "form": form, "dose": {"value": value, "unit": unit}, "frequency": frequency,
            "route": route, "days": days, **extra}


def fired(result: AuditResult, at_least: str = "warning") -> set[str]:
    rank = {"info": 1, "warning": 2, "critical": 3}
    return {f.rule for f in result.findings if rank[str(f.severity)] >= rank[at_least]}


METFORMIN = item("二甲双胍", 500, frequency="bid")
AMLODIPINE = item("氨氯地平", 5)


@pytest.mark.parametrize(
    ("prescription", "rule", "category"),
    [
        # indication: metformin for a cold
        (rx(METFORMIN, diagnoses=["J06.9"]), "metformin.indication", "indication"),
        # dose: metformin 1000 mg four times a day = 4000 mg/day
        (rx(item("二甲双胍", 1000, frequency="qid")), "metformin.dose.adult.per_day", "dose"),
        # route: metformin tablets given intravenously
        (rx(item("二甲双胍", 500, frequency="bid", route="静推")), "metformin.route.oral_solid", "route"),
        # contraindication: eGFR 24
        (rx(METFORMIN, patient={"egfr": 24, "age_years": 72}), "metformin.contra.egfr_lt_30", "contraindication"),
        # duplicate: the same ingredient twice
        (rx(METFORMIN, item("metformin", 500, frequency="bid")), "duplicate.same_ingredient", "duplicate"),
        # duration: an acute drug for 10 days in outpatient
        (rx(AMLODIPINE, item("阿莫西林", 500, frequency="tid", days=10), diagnoses=["I10.x00", "J02.9"]),
         "duration.outpatient", "duration"),
        # duration: emergency prescription for 5 days
        (rx(item("阿莫西林", 500, frequency="tid", days=5), diagnoses=["J02.9"], visit_type="emergency"),
         "duration.emergency", "duration"),
        # contraindication: penicillin allergy covers amoxicillin
        (rx(item("阿莫西林", 500, frequency="tid", form="胶囊"), diagnoses=["J02.9"],
            patient={"allergies": ["青霉素"]}), "amoxicillin.allergy", "contraindication"),
        # interaction: warfarin with an NSAID
        (rx(item("华法林", 3), item("布洛芬", 200, frequency="tid"), diagnoses=["I48.9", "M54.5"]), None,
         "interaction"),
        # contraindication: ACE inhibitor in pregnancy
        (rx(item("依那普利", 10), diagnoses=["I10.x00"],
            patient={"sex": "F", "age_years": 30, "pregnant": True, "lactating": False}), None, "contraindication"),
        # duplicate: two statins
        (rx(item("阿托伐他汀", 20, frequency="qn"), item("瑞舒伐他汀", 10, frequency="qn"), diagnoses=["E78.5"]), None,
         "duplicate"),
    ],
)
def test_each_category_is_caught(auditor, prescription, rule, category):
    result = auditor.audit(prescription)
    assert result.flagged
    categories = {f.category for f in result.findings if str(f.severity) != "info"}
    assert category in categories, [f.model_dump() for f in result.findings]
    if rule is not None:
        assert rule in fired(result)


def test_finding_explains_itself(auditor):
    """rule id, category, severity, item, message with the values, file:line, evidence with the limit."""
    result = auditor.audit(rx(METFORMIN, patient={"egfr": 24, "age_years": 72}))
    finding = next(f for f in result.findings if f.rule == "metformin.contra.egfr_lt_30")
    assert finding.category == "contraindication" and str(finding.severity) == "critical"
    assert finding.item == "1" and "24" in finding.message and "二甲双胍" in finding.message
    path, line = finding.source.rsplit(":", 1)
    assert path == "rules/drugs/metformin.yaml" and line.isdigit()
    text = Path(path).read_text(encoding="utf-8").splitlines()[int(line) - 1]
    assert "egfr_lt_30" in text  # the line named is where the rule is written
    assert finding.evidence == {"egfr": 24, "limit": 30}
    assert result.rulebook.startswith("sha256:") and result.severity == "critical"


def test_ordinary_prescriptions_pass(auditor):
    """A correct chronic-disease prescription: no warning, no block."""
    result = auditor.audit(rx(item("二甲双胍", 500, frequency="tid", days=30), item("氨氯地平", 5, days=30),
                              diagnoses=["E11.900", "I10.x00"]))
    assert not result.flagged, [f.model_dump() for f in result.findings]


def test_unknown_drug_is_visible_not_silent(auditor):
    result = auditor.audit(rx(item("某某未收录颗粒", 10, unit="g", frequency="tid", form="颗粒")))
    finding = next(f for f in result.findings if f.rule == "completeness.unknown_drug")
    assert finding.category == "completeness" and finding.item == "1" and "某某未收录颗粒" in finding.message
    # CONTRACT §1: unknown is a warning by default — the pharmacist reviews it by hand.
    assert str(finding.severity) == "warning" and result.flagged


def test_missing_data_a_rule_needs_is_said(auditor):
    """No eGFR: the renal rules say they could not run, as info; nothing is guessed."""
    prescription = rx(METFORMIN)
    del prescription["patient"]["egfr"]
    result = auditor.audit(prescription)
    note = next(f for f in result.findings if f.rule == "metformin.missing.egfr")
    assert str(note.severity) == "info" and "metformin.contra.egfr_lt_30" in note.evidence["rules"]
    assert not result.flagged


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (lambda p: p["items"][0].pop("frequency"), "completeness.missing.freq"),  # frequency not written
        (lambda p: p["items"][0].update(frequency="每天好几次"), "completeness.unusable.freq"),  # unreadable
        (lambda p: p["items"][0].update(dose={"value": 2, "unit": "袋"}), "completeness.unusable.dose"),  # no strength
        (lambda p: p["patient"].pop("age_years"), "completeness.missing.age"),  # no age on the prescription
        (lambda p: p.update(diagnoses=[]), "completeness.missing.diagnosis"),  # no diagnosis
    ],
)
def test_unusable_data_is_a_completeness_finding(auditor, change, rule):
    prescription = rx(copy.deepcopy(METFORMIN))
    change(prescription)
    result = auditor.audit(prescription)
    assert rule in fired(result)


def test_tablet_count_converted_through_strength(auditor):
    """3 片 of 0.5 g = 1500 mg a dose: above the 1000 mg single dose."""
    result = auditor.audit(rx(item("二甲双胍", 3, unit="片", frequency="bid", strength={"value": 0.5, "unit": "g"})))
    assert "metformin.dose.adult.per_dose" in fired(result)


def test_age_from_birth_date_at_issue(auditor):
    """Born 2018, prescribed 2025: a 7-year-old; metformin is not for children under 10."""
    prescription = rx(METFORMIN, patient={"birth_date": "2018-01-01", "weight_kg": 22})
    del prescription["patient"]["age_years"]
    assert "metformin.contra.child_lt_10" in fired(auditor.audit(prescription))


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ("{not json", None),  # not JSON at all
        ({"id": "X1", "items": [{"drug": "二甲双胍", "dose": {"value": -5, "unit": "mg"}}]}, "items.0.dose.value"),
        ({"items": [{"drug": "二甲双胍"}]}, "id"),  # no id
        ({"id": "X2", "items": []}, "items"),  # nothing prescribed
        ({"id": "X3", "patient": {"egfr": "NaN"}, "items": [{"drug": "x"}]}, "patient.egfr"),  # NaN never compares
    ],
)
def test_bad_input_names_prescription_and_field(auditor, record, field):
    with pytest.raises(PrescriptionError) as caught:
        auditor.audit(record)
    assert caught.value.field == field
    if isinstance(record, dict) and record.get("id"):
        assert record["id"] in str(caught.value)


def test_batch_reports_bad_records_and_goes_on(auditor):
    good = rx(METFORMIN)
    outcomes = auditor.audit_batch([good, {"id": "BAD", "items": "nope"}, json.dumps(good)])
    assert isinstance(outcomes[0], AuditResult) and isinstance(outcomes[2], AuditResult)
    assert isinstance(outcomes[1], RecordError) and outcomes[1].id == "BAD" and outcomes[1].line == 2


def test_unknown_fields_are_kept_and_ignored(auditor):
    prescription = rx(METFORMIN, his_extra={"anything": 1})
    prescription["items"][0]["insurance_code"] = "XJ-123"
    assert not auditor.audit(prescription).flagged


def test_result_json_follows_the_contract(auditor):
    data = json.loads(auditor.audit(rx(METFORMIN, diagnoses=["J06.9"])).to_json())
    assert set(data) == {"id", "flagged", "severity", "rulebook", "findings"}
    assert {"rule", "category", "severity", "item", "message", "source", "evidence"} <= set(data["findings"][0])


def _without_timing(result: AuditResult) -> dict:
    return result.model_dump(mode="json")


def test_batch_facts_of_one_prescription_never_meet_anothers(auditor):
    """A batch asserts many prescriptions' facts into durable_rules together: a warfarin order and
    a fluconazole order, a penicillin-allergic patient and an amoxicillin order, paracetamol and a
    paracetamol combination — each pair flagged when on one prescription, and not at all when
    split over two prescriptions of the same batch."""
    warfarin = item("华法林", 3)
    fluconazole = item("氟康唑", 150, form="胶囊")
    amoxicillin = item("阿莫西林", 500, frequency="tid", form="胶囊")
    paracetamol = item("对乙酰氨基酚", 500, frequency="tid")
    combination = item("复方氨酚烷胺", 1, unit="粒", frequency="bid", form="胶囊")
    together = [
        rx({**warfarin, "id": "1"}, {**fluconazole, "id": "2"}, id="BOTH-1", diagnoses=["I48.900", "B37.900"]),
        rx({**amoxicillin, "id": "1"}, id="BOTH-2", diagnoses=["J02.9"], patient={"allergies": ["青霉素"]}),
        rx({**paracetamol, "id": "1"}, {**combination, "id": "2"}, id="BOTH-3", diagnoses=["J06.900"]),
    ]
    apart = [
        rx({**warfarin, "id": "1"}, id="A-1", diagnoses=["I48.900"]),
        rx({**fluconazole, "id": "1"}, id="B-1", diagnoses=["B37.900"]),
        rx({**item("二甲双胍", 500, frequency="bid"), "id": "1"}, id="A-2", patient={"allergies": ["青霉素"]}),
        rx({**amoxicillin, "id": "1"}, id="B-2", diagnoses=["J02.9"]),
        rx({**paracetamol, "id": "1"}, id="A-3", diagnoses=["J06.900"]),
        rx({**combination, "id": "1"}, id="B-3", diagnoses=["J06.900"]),
    ]
    results = {r.id: r for r in auditor.audit_batch([*apart[:3], *together, *apart[3:]])}
    categories = {rid: {str(f.category) for f in r.findings if str(f.severity) != "info"} for rid, r in results.items()}
    assert "interaction" in categories["BOTH-1"]
    assert "contraindication" in categories["BOTH-2"]
    assert "duplicate" in categories["BOTH-3"]
    for record in apart:
        assert not categories[record["id"]] & {"interaction", "contraindication", "duplicate"}, record["id"]


def test_a_batch_answers_exactly_what_single_audits_answer(auditor):
    """Every shipped example prescription, audited in one batch and one at a time: the same results."""
    from rx_audit.io import iter_records

    root = Path(__file__).resolve().parent.parent
    records = [record for _, record in iter_records(root / "examples" / "prescriptions.jsonl")]
    batch = auditor.audit_batch(records)
    assert len(batch) == len(records) > 100
    for record, result in zip(records, batch, strict=True):
        assert _without_timing(result) == _without_timing(auditor.audit(record)), record["id"]


@pytest.mark.parametrize(
    ("first", "second", "flagged"),
    [
        # two loop diuretics, two mucolytics, two xanthine-oxidase inhibitors: no other rule names them
        (item("呋塞米", 20), item("托拉塞米", 10), True),
        (item("氨溴索", 30, frequency="tid"), item("乙酰半胱氨酸", 200, frequency="tid"), True),
        (item("别嘌醇", 100), item("非布司他", 40), True),
        # dual antiplatelet therapy is standard care (B01AC exempt)
        (item("阿司匹林肠溶片", 100), item("氯吡格雷", 75), False),
        # a nitrate as needed beside a regular one
        (item("单硝酸异山梨酯缓释片", 60), item("硝酸甘油", 0.5, frequency="prn"), False),
        # "other antiepileptics" (N03AX) are combined on purpose
        (item("拉莫三嗪", 50, frequency="bid"), item("左乙拉西坦", 500, frequency="bid"), False),
        # the first-line TB regimen (J04A exempt)
        (item("吡嗪酰胺", 1500), item("乙胺丁醇", 750), False),
    ],
)
def test_two_products_of_one_atc_group_are_a_duplicate_unless_the_group_is_exempt(auditor, first, second, flagged):
    """duplicate.atc reaches every dictionary drug by its ATC level-4 group; groups combined in
    standard care, as-needed orders and 'other …' groups are left alone (rules/rulebook.yaml)."""
    diagnoses = ["I10", "F41.1", "G40.9", "A15.0", "E11.900", "I25.1", "J20.9", "M10.0"]
    result = auditor.audit(rx({**first, "id": "1"}, {**second, "id": "2"}, diagnoses=diagnoses))
    found = [f for f in result.findings if f.rule == "duplicate.atc"]
    assert bool(found) is flagged, [f.rule for f in result.findings]
    if flagged:
        assert found[0].item == "2" and found[0].evidence["items"] == ["1", "2"] and "ATC" in found[0].message


def test_an_infusion_vehicle_written_once_per_group_is_not_a_duplicate(auditor):
    """输液处方: 0.9%氯化钠 100 ml as the vehicle of two groups, 葡萄糖氯化钠 for a third, two
    infusion sets — no duplicate; the same antibiotic in two groups still is one."""
    def bottle(drug, ml):
        return {"drug": drug, "form": "注射液", "dose": {"value": ml, "unit": "ml"}, "frequency": "qd",
                "route": "ivgtt", "days": 1}

    vehicles = [bottle("0.9%氯化钠注射液", 100), bottle("0.9%氯化钠注射液", 100), bottle("葡萄糖氯化钠注射液", 250),
                {"drug": "一次性使用输液器", "dose": {"value": 1, "unit": "个"}, "frequency": "qd", "days": 1},
                {"drug": "一次性使用输液器", "dose": {"value": 1, "unit": "个"}, "frequency": "qd", "days": 1}]
    cefuroxime = {"drug": "注射用头孢呋辛钠", "form": "注射用粉针", "dose": {"value": 1.5, "unit": "g"},
                  "frequency": "qd", "route": "ivgtt", "days": 1}
    items = [{**entry, "id": str(n)} for n, entry in enumerate([*vehicles, cefuroxime], start=1)]
    result = auditor.audit(rx(*items, diagnoses=["J18.900"]))
    assert not [f.rule for f in result.findings if str(f.category) == "duplicate"]
    twice = auditor.audit(rx(*items, {**cefuroxime, "id": "9"}, diagnoses=["J18.900"]))
    assert "duplicate.same_ingredient" in {f.rule for f in twice.findings}


def test_skin_test_results_are_read_positive_as_allergy_negative_as_none(auditor):
    """"头孢曲松皮试(+)、青霉素皮试(-)": a cephalosporin is held for the allergy; amoxicillin gets only
    the cephalosporin cross-reactivity note, not a penicillin allergy (the penicillin test was negative)."""
    patient = {"allergies": ["头孢曲松皮试(+)、青霉素皮试(-)"]}
    cefaclor = auditor.audit(rx({**item("头孢克洛", 250, frequency="tid", form="胶囊"), "id": "1"},
                                diagnoses=["J02.9"], patient=patient))
    amoxicillin = auditor.audit(rx({**item("阿莫西林", 500, frequency="tid", form="胶囊"), "id": "1"},
                                   diagnoses=["J02.9"], patient=patient))
    assert any(str(f.category) == "contraindication" and str(f.severity) != "info" for f in cefaclor.findings)
    rules = {f.rule for f in amoxicillin.findings}
    assert "amoxicillin.allergy" not in rules and "amoxicillin.allergy.cross.cephalosporin" in rules
    assert "completeness.allergy_unreadable" not in rules


def test_one_pack_is_never_an_oversupply(auditor):
    """One insulin pen (300 IU) at 18 IU a day lasts 16 days: the least that can be dispensed for a
    7-day prescription, not a quantity problem; three pens are."""
    def pen(count):
        return {"id": "1", "drug": "门冬胰岛素注射液", "form": "注射液", "dose": {"value": 18, "unit": "IU"},
                "frequency": "qd", "route": "sc", "days": 7, "quantity": {"value": count, "unit": "支"},
                "strength": {"value": 300, "unit": "IU/支"}}

    one = auditor.audit(rx(pen(1), diagnoses=["E11.900"]))
    three = auditor.audit(rx(pen(3), diagnoses=["E11.900"]))
    assert not [f.rule for f in one.findings if f.rule.startswith("duration.quantity")]
    assert [f.rule for f in three.findings if f.rule.startswith("duration.quantity")]
