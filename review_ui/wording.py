"""The detail in pharmacist language: evidence, codes and the engine's words as a pharmacist reads
them — the drug's Chinese name, the value with its limit and unit, the diagnosis names — instead of
``codes = ['K25', …]`` or ``form_group = oral_solid``.

Pure functions (no Streamlit): the drug names come in as a dict (drug id → Chinese name, built from
``rx_audit.drug_infos`` by ``review_ui.catalog``), so the rendering is tested without a page. The
output is plain text; callers put it through ``ui.md`` before any Markdown call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

VISIT_TYPES: dict[str, str] = {
    "outpatient": "门诊",
    "emergency": "急诊",
    "inpatient": "住院",
    "chronic": "慢病长期处方",
}
HEPATIC: dict[str, str] = {"none": "正常（无损害）", "mild": "轻度损害", "moderate": "中度损害", "severe": "重度损害"}
FORM_GROUPS: dict[str, str] = {
    "oral_solid": "口服固体制剂",
    "oral_liquid": "口服液体制剂",
    "injection": "注射剂",
    "inhalation": "吸入制剂",
    "topical": "外用制剂",
    "ophthalmic": "眼用制剂",
    "otic": "耳用制剂",
    "nasal": "鼻用制剂",
    "rectal": "直肠用制剂",
    "vaginal": "阴道用制剂",
}
REGIMENS: dict[str, str] = {
    "adult": "成人",
    "child": "儿童",
    "elderly": "老年",
    "adolescent": "青少年",
    "infant": "婴儿",
    "neonate": "新生儿",
    "adult_sustained": "成人·缓释",
    "renal_30_45": "eGFR 30–45",
}
FACILITY_LEVELS: dict[str, str] = {"village": "村卫生室", "township": "乡镇卫生院", "county": "县级医院"}
ROUTES: dict[str, str] = {
    "po": "口服",
    "iv": "静推",
    "ivgtt": "静滴",
    "im": "肌注",
    "sc": "皮下",
    "inh": "吸入",
    "top": "外用",
    "pr": "直肠",
    "sl": "舌下",
    "ih": "皮下",
    "oph": "滴眼",
    "ot": "滴耳",
    "nas": "鼻用",
    "vag": "阴道",
}
FREQUENCIES: dict[str, str] = {
    "qd": "每日1次",
    "bid": "每日2次",
    "tid": "每日3次",
    "qid": "每日4次",
    "q4h": "每4小时",
    "q6h": "每6小时",
    "q8h": "每8小时",
    "q12h": "每12小时",
    "qn": "每晚1次",
    "qod": "隔日1次",
    "qw": "每周1次",
    "biw": "每周2次",
    "tiw": "每周3次",
    "st": "立即",
    "prn": "必要时",
}
SEX: dict[str, str] = {"M": "男", "F": "女", "U": "未知"}
# Evidence keys as words. Keys not listed are shown as they are (a new rule's evidence is never hidden).
EVIDENCE_LABELS: dict[str, str] = {
    "egfr": "eGFR",
    "age": "年龄",
    "weight": "体重",
    "weight_kg": "体重",
    "days": "天数",
    "visit": "就诊类型",
    "item_count": "药品种数",
    "facility_level": "机构级别",
    "route": "给药途径",
    "form": "剂型",
    "form_group": "剂型类别",
    "allowed": "可用剂型",
    "drug": "药品",
    "drugs": "药品",
    "between": "相互作用双方",
    "items": "涉及第几项",
    "class_name": "药物类别",
    "tier": "抗菌药物分级",
    "pregnant": "妊娠",
    "lactating": "哺乳",
    "sex": "性别",
    "regimen": "适用人群",
    "diagnoses": "诊断",
    "codes": "适应证诊断",
    "allergy": "过敏史",
    "allergen": "过敏原",
    "frequency": "频次",
    "hepatic": "肝功能",
    "hepatic_impairment": "肝功能",
    "title": "医师职称",
    "quantity": "数量",
}
UNITS: dict[str, str] = {"egfr": "mL/min/1.73m²", "age": "岁", "weight": "kg", "weight_kg": "kg", "days": "天"}
# Keys folded into one phrase ("日剂量 0.375 mg，上限 0.25 mg") rather than listed one by one.
_AMOUNT_KEYS = ("daily", "per_dose", "value", "limit", "unit", "minimum", "maximum")
_AMOUNT_WORDS = {"daily": "日剂量", "per_dose": "单次剂量", "value": "数值", "minimum": "下限", "maximum": "上限"}
_CODE_LIST_SHOWN = 6
# "（elderly）" and the like, written by the engine into messages: the Chinese word instead.
_REGIMEN_IN_TEXT = re.compile(r"（(" + "|".join(sorted(map(re.escape, REGIMENS), key=len, reverse=True)) + r")）")


def number(value: Any) -> str:
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def drug_name(drug_id: Any, names: Mapping[str, str]) -> str:
    """The drug's Chinese name (``metformin`` → ``二甲双胍``); the text itself when not a drug id."""
    text = str(drug_id)
    return names.get(text, text)


def diagnosis_text(codes: Any, prescription: Mapping[str, Any]) -> str:
    """``I10.x00 原发性高血压、E11.900 2型糖尿病`` — codes with the names the prescription gives them."""
    names: dict[str, str] = {}
    for entry in prescription.get("diagnoses") or []:
        if isinstance(entry, dict) and entry.get("code"):
            names[str(entry["code"])] = str(entry.get("name") or "")
    values = codes if isinstance(codes, (list, tuple)) else [codes]
    return "、".join(f"{code} {names.get(str(code), '')}".strip() for code in values) or "无"


def code_list(codes: Any) -> str:
    """A long list of ICD codes, the first few and how many in all."""
    values = [str(c) for c in codes] if isinstance(codes, (list, tuple)) else [str(codes)]
    shown = "、".join(values[:_CODE_LIST_SHOWN])
    return shown + (f" 等 {len(values)} 类" if len(values) > _CODE_LIST_SHOWN else "")


# Evidence keys whose value is one word of a table above (``oral_solid`` → ``口服固体制剂``).
_WORD_TABLES: dict[str, dict[str, str]] = {
    "visit": VISIT_TYPES,
    "facility_level": FACILITY_LEVELS,
    "regimen": REGIMENS,
    "hepatic": HEPATIC,
    "hepatic_impairment": HEPATIC,
    "sex": SEX,
}
_LOWER_TABLES: dict[str, dict[str, str]] = {"route": ROUTES, "frequency": FREQUENCIES}


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _value(key: str, value: Any, names: Mapping[str, str], prescription: Mapping[str, Any]) -> str:
    special = {
        "drug": lambda: "、".join(drug_name(v, names) for v in _listed(value)),
        "drugs": lambda: "、".join(drug_name(v, names) for v in _listed(value)),
        "between": lambda: " × ".join(drug_name(v, names) for v in _listed(value)),
        "items": lambda: "、".join(f"第{v}项" for v in _listed(value)),
        "diagnoses": lambda: diagnosis_text(value, prescription),
        "codes": lambda: code_list(value),
        "form_group": lambda: "、".join(FORM_GROUPS.get(str(v), str(v)) for v in _listed(value)),
        "allowed": lambda: "、".join(FORM_GROUPS.get(str(v), str(v)) for v in _listed(value)),
    }
    if key in special:
        return special[key]()
    if key in _WORD_TABLES:
        return _WORD_TABLES[key].get(str(value), str(value))
    if key in _LOWER_TABLES:
        return _LOWER_TABLES[key].get(str(value).lower(), str(value))
    if key in ("pregnant", "lactating") and isinstance(value, (bool, int)):
        return "是" if value else "否"
    if isinstance(value, (list, tuple)):
        return "、".join(number(v) for v in value)
    if isinstance(value, dict):
        return "，".join(f"{k} {number(v)}" for k, v in value.items())
    unit = UNITS.get(key)
    return f"{number(value)} {unit}" if unit and isinstance(value, (int, float)) else number(value)


def _amount_phrase(evidence: Mapping[str, Any]) -> str | None:
    """``日剂量 0.375 mg，上限 0.25 mg``: the value, the limit and the unit as one phrase."""
    unit = evidence.get("unit")
    suffix = f" {unit}" if unit else ""
    parts = []
    measured = next((k for k in ("daily", "per_dose") if k in evidence), None)
    if measured is not None:
        parts.append(f"{_AMOUNT_WORDS[measured]} {number(evidence[measured])}{suffix}")
    elif "value" in evidence:
        parts.append(f"数值 {number(evidence['value'])}{suffix}")
    for key in ("minimum", "maximum"):
        if key in evidence:
            parts.append(f"{_AMOUNT_WORDS[key]} {number(evidence[key])}{suffix}")
    if "limit" in evidence and "egfr" not in evidence:
        parts.append(f"上限 {number(evidence['limit'])}{suffix}")
    return "，".join(parts) or None


def evidence_text(
    evidence: Any, names: Mapping[str, str] | None = None, prescription: Mapping[str, Any] | None = None
) -> str:
    """A finding's evidence as a pharmacist reads it (plain text, ``；``-separated)."""
    if not isinstance(evidence, dict) or not evidence:
        return ""
    names = names or {}
    prescription = prescription or {}
    parts = []
    amount = _amount_phrase(evidence)
    if amount:
        parts.append(amount)
    for key, value in evidence.items():
        if key in _AMOUNT_KEYS and amount:
            continue
        if value is None:
            continue
        if key == "daily" and "value" in evidence:
            continue
        if key == "limit" and "egfr" in evidence:  # eGFR 24，低于 30
            parts.append(f"阈值 {number(value)} {UNITS['egfr']}")
            continue
        if key == "items":  # shown on the items table; the drugs say the same in words
            continue
        if key == "drugs" and "between" in evidence:
            continue
        parts.append(f"{EVIDENCE_LABELS.get(key, key)} {_value(key, value, names, prescription)}")
    return "；".join(parts)


def message_text(message: Any) -> str:
    """A finding's message with the engine's English leftovers in Chinese (``（elderly）`` → ``（老年）``)."""
    if message is None:
        return ""
    return _REGIMEN_IN_TEXT.sub(lambda m: f"（{REGIMENS[m.group(1)]}）", str(message))


def finding_items(finding: Mapping[str, Any]) -> list[str]:
    """Every item a finding concerns: its own, and for an interaction or a duplicate both lines."""
    out: list[str] = []
    if finding.get("item") not in (None, ""):
        out.append(str(finding["item"]))
    evidence = finding.get("evidence")
    if isinstance(evidence, dict) and isinstance(evidence.get("items"), (list, tuple)):
        out.extend(str(i) for i in evidence["items"] if str(i) not in out)
    return out


# Placeholders left in rule templates ({egfr}, {value}…) on the rulebook page: what goes there.
PLACEHOLDERS: dict[str, str] = {
    "egfr": "eGFR值",
    "value": "实际值",
    "limit": "上限",
    "daily": "日剂量",
    "unit": "单位",
    "allergy": "过敏原",
    "age": "年龄",
    "days": "天数",
    "form": "剂型",
    "route": "途径",
    "regimen": "人群",
    "other": "另一药品",
    "class_name": "药物类别",
    "tier": "分级",
    "diagnosis": "诊断",
}
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def template_text(message: str) -> str:
    """A rule's message template readable in the rulebook: ``{egfr}`` → ``〈eGFR值〉``."""
    return message_text(_PLACEHOLDER.sub(lambda m: f"〈{PLACEHOLDERS.get(m.group(1), m.group(1))}〉", message))


def hepatic_text(value: Any) -> str:
    if value in (None, ""):
        return "未填"
    return HEPATIC.get(str(value), str(value))


def visit_text(value: Any) -> str:
    if value in (None, ""):
        return "—"
    return VISIT_TYPES.get(str(value), str(value))


def route_text(value: Any) -> str:
    if value in (None, ""):
        return ""
    return ROUTES.get(str(value).lower(), str(value))


def frequency_text(value: Any) -> str:
    if value in (None, ""):
        return ""
    return FREQUENCIES.get(str(value).lower(), str(value))
