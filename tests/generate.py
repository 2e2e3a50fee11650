"""Random but plausible prescriptions over a rulebook's drugs, for property and reference tests."""

from __future__ import annotations

import random
from typing import Any

from rx_audit.rulebook import Rulebook

FORM_TEXTS = {
    "oral_solid": ["片", "tablet", "胶囊", "缓释片", "控释片", "肠溶片", "颗粒", "capsule", "sustained-release tablet"],
    "oral_liquid": ["混悬液", "糖浆", "口服溶液", "suspension"],
    "injection": ["注射液", "注射用粉针", "injection", "powder for injection"],
    "inhalation": ["吸入气雾剂", "inhaler"],
    "topical": ["乳膏", "凝胶", "cream"],
    "rectal": ["栓剂"],
}
ROUTE_TEXTS = ["po", "口服", "iv", "ivgtt", "静滴", "im", "肌注", "sc", "inh", "top", "外用", "pr", "sl"]
FREQUENCIES = ["qd", "bid", "tid", "qid", "q6h", "q8h", "q12h", "qn", "qod", "qw", "st", "prn", "每日3次",
               "每日2次", "每晚1次", "TID", "Bid"]
OTHER_CODES = ["J06.9", "I10.x00", "E11.900", "K29.700", "M54.5", "R50.900", "J20.9", "N39.0", "I25.1",
               "E78.5", "M10.9", "F32.9", "J45.9", "O26.9", "N18.4", "K21.0", "B96.8", "L50.9"]
ALLERGY_TEXTS = ["青霉素", "头孢类", "磺胺", "阿司匹林", "非甾体抗炎药", "海鲜", "喹诺酮", "阿莫西林", "大环内酯类"]


def _limit_scale(rulebook: Rulebook, drug_id: str) -> float:
    """A typical maximum dose of the drug, read from its per-dose limits, to draw doses around."""
    limits = [rule.limits["limit"] for rule in rulebook.rules.values()
              if rule.drug == drug_id and rule.id.endswith(".per_dose") and "limit" in rule.limits]
    return max(limits) if limits else 100.0


def prescription(rng: random.Random, rulebook: Rulebook, number: int, *, messy: bool = True) -> dict[str, Any]:
    # Mostly drugs with a monograph (their rules are many), a quarter from the dictionary alone.
    with_monograph = sorted(d.id for d in rulebook.drugs.values() if d.monograph)
    dictionary_only = sorted(d.id for d in rulebook.drugs.values() if not d.monograph) or with_monograph
    items = []
    for position in range(rng.randint(1, 4)):
        drug = rulebook.drugs[rng.choice(with_monograph if rng.random() < 0.75 else dictionary_only)]
        group = rng.choice(list(drug.forms)) if drug.forms and rng.random() < 0.85 else rng.choice(list(FORM_TEXTS))
        form_text = rng.choice(FORM_TEXTS.get(group, ["片"]))
        route = rng.choice(drug.forms.get(group) or ["po"]) if rng.random() < 0.8 else rng.choice(ROUTE_TEXTS)
        scale = _limit_scale(rulebook, drug.id)
        dose_value = round(scale * rng.choice([0.1, 0.25, 0.5, 1, 1, 1.5, 2, 3]), 3)
        item: dict[str, Any] = {
            "id": str(position + 1),
            "drug": rng.choice([drug.name, drug.id, *drug.names]) if drug.names else drug.name,
            "form": form_text,
            "dose": {"value": dose_value, "unit": drug.unit or "mg"},
            "frequency": rng.choice(FREQUENCIES),
            "route": route,
            "days": rng.choice([1, 3, 5, 7, 7, 10, 14, 28, 30, 60, 90]),
        }
        if drug.unit == "mg" and rng.random() < 0.2:
            item["dose"] = {"value": dose_value / 1000, "unit": "g"}
        if drug.unit == "mg" and rng.random() < 0.2:
            strength = max(scale / 2, 1)
            item["strength"] = {"value": strength, "unit": "mg"}
            item["dose"] = {"value": rng.choice([0.5, 1, 2, 3]), "unit": "片"}
        if rng.random() < 0.3:  # the amount dispensed, in the form's count or (rarely) in boxes
            item["quantity"] = {"value": rng.choice([6, 10, 21, 30, 60, 90, 180, 360]),
                                "unit": rng.choice([item["dose"]["unit"], "片", "盒"])}
        if messy and rng.random() < 0.05:
            del item["frequency"]
        if messy and rng.random() < 0.03:
            item["dose"] = {"value": 2, "unit": "袋"}
        if messy and rng.random() < 0.03:
            item["form"] = "神秘剂型"
        items.append(item)
    if messy and rng.random() < 0.1:
        items.append({"id": str(len(items) + 1), "drug": rng.choice(["中药饮片X", "unknownium", "维生素Z"]),
                      "dose": {"value": 1, "unit": "mg"}, "frequency": "qd", "route": "po", "days": 3})
    age = rng.choice([0.5, 3, 8, 11, 15, 17, 25, 40, 52, 64, 66, 75, 88])
    sex = rng.choice(["M", "F"])
    patient: dict[str, Any] = {"id": f"P{number}", "sex": sex, "age_years": age, "allergies": []}
    if rng.random() < 0.8:
        patient["weight_kg"] = max(4.0, round(age * 3 + 8, 1) if age < 15 else rng.choice([45, 60, 75, 95]))
    if rng.random() < 0.7:
        patient["egfr"] = rng.choice([10, 25, 35, 44, 50, 65, 90, 110])
    if rng.random() < 0.6:
        patient["hepatic_impairment"] = rng.choice(["none", "none", "mild", "moderate", "severe"])
    if sex == "F" and rng.random() < 0.8:
        patient["pregnant"] = rng.random() < 0.1
        patient["lactating"] = rng.random() < 0.1
    if rng.random() < 0.25:
        patient["allergies"] = rng.sample(ALLERGY_TEXTS, rng.randint(1, 2))
    if messy and rng.random() < 0.03:
        del patient["age_years"]
        patient["birth_date"] = f"{rng.randint(1930, 2024)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"
    codes: list[str] = []
    for item in items:
        drug = rulebook.drug_for(item["drug"])
        if drug is None:
            continue
        rule = next((r for r in rulebook.rules.values() if r.id == f"{drug.id}.indication"), None)
        if rule and rng.random() < 0.8:
            code = rng.choice(rule.limits["codes"])
            codes.append(code + (rng.choice(["", ".900", "01"]) if len(code) == 3 else ""))
    if rng.random() < 0.5:
        codes.append(rng.choice(OTHER_CODES))
    if messy and rng.random() < 0.05:
        codes = []
    return {
        "id": f"GEN-{number:06d}",
        "issued_at": "2025-03-26T10:15:00+08:00",
        "visit_type": rng.choice(["outpatient", "outpatient", "outpatient", "emergency", "chronic", "inpatient"]),
        "facility": {"id": "F1", "name": "测试乡镇卫生院", "level": rng.choice(["township", "village", "county"])},
        "prescriber": {
            "id": f"D{rng.randint(1, 20)}",
            **({"title": rng.choice(["乡村医生", "住院医师", "主治医师", "副主任医师", "主任医师", "attending",
                                     "医士"])} if rng.random() < 0.7 else {}),
            **({"privileges": rng.sample(["antibacterial_restricted", "antibacterial_special", "narcotic",
                                          "psychotropic_1"], rng.randint(0, 2))} if rng.random() < 0.5 else {}),
        },
        "department": rng.choice(["全科", "内科", "儿科", "急诊"]),
        "patient": patient,
        "diagnoses": [{"code": code} for code in codes],
        "items": items,
    }
