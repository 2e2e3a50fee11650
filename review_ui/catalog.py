"""The rulebook as pharmacists browse it: rx_audit's public views (``rule_infos``, ``drug_infos``,
``rules_of``), never the compiled rules. Everything is cached per rulebook hash: the rulebook has
~1,500 drugs (the drug dictionary) and a few thousand rules, built into tables once per version;
a reload (new hash) builds new ones, browsing never rebuilds.

Pass the ``Rulebook`` object itself (``auditor.rulebook``, read once per page run): its ``hash``
is the key, so a hot swap between two reads cannot mix two versions.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from review_ui import ui, wording
from rx_audit import DrugInfo, Rulebook, RuleInfo, drug_infos, rule_infos, rules_of

KIND_LABELS: dict[str, str] = {
    "chemical": "化学药 chemical",
    "biological": "生物制品 biological",
    "tcm": "中成药 TCM",
    "fluid": "输液 fluid",
    "supply": "耗材 supply",
}
MONOGRAPH = "专论 monograph"
DICTIONARY_ONLY = "仅词典 dictionary only"


# Leading underscore: not hashed by Streamlit; the rulebook hash is the key.
@st.cache_resource(show_spinner=False, max_entries=4)
def _views(rulebook_hash: str, _rulebook: Rulebook) -> tuple[tuple[DrugInfo, ...], tuple[RuleInfo, ...]]:
    return tuple(drug_infos(_rulebook)), tuple(rule_infos(_rulebook))


def drugs(rulebook: Rulebook) -> tuple[DrugInfo, ...]:
    return _views(rulebook.hash, rulebook)[0]


@st.cache_resource(show_spinner=False, max_entries=4)
def _drug_names(rulebook_hash: str, _rulebook: Rulebook) -> dict[str, str]:
    return {drug.id: drug.name for drug in drugs(_rulebook)}


def drug_names(rulebook: Rulebook) -> dict[str, str]:
    """Drug id → Chinese name (``metformin`` → ``二甲双胍``), for evidence written with drug ids."""
    return _drug_names(rulebook.hash, rulebook)


def rules(rulebook: Rulebook) -> tuple[RuleInfo, ...]:
    """Every rule (the missing-data twins left out), messages with the drug's Chinese name."""
    return _views(rulebook.hash, rulebook)[1]


@st.cache_data(show_spinner=False, max_entries=64)
def _rule_ids_for(rulebook_hash: str, query: str, _rulebook: Rulebook) -> frozenset[str]:
    return frozenset(info.id for info in rules_of(_rulebook, query))


def rule_ids_for(rulebook: Rulebook, query: str) -> frozenset[str]:
    """The rules of every drug ``query`` names (Chinese or English name, synonym, ATC) and the rules
    whose id contains it (``rx_audit.rules_of``)."""
    return _rule_ids_for(rulebook.hash, query.strip(), rulebook)


@st.cache_data(show_spinner=False, max_entries=4)
def _rules_table(rulebook_hash: str, _rulebook: Rulebook) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "规则 rule": rule.id,
                "药品 drug": rule.drug_name or "",
                "类别 category": ui.category_label(rule.category),
                "等级 severity": ui.severity_label(rule.severity),
                # {drug} is filled by rx_audit; what the engine fills at audit time ({egfr}, {value}…)
                # is named in words, so no raw template reaches the pharmacist.
                "提示 message": wording.template_text(rule.message),
                "来源文件 source": rule.source,
                "临床依据 reference": rule.reference or "",
                "drug_key": rule.drug_id or "",
                "category_key": rule.category,
                "severity_key": rule.severity,
            }
            for rule in rules(_rulebook)
        ]
    )


def rules_table(rulebook: Rulebook) -> pd.DataFrame:
    """One row per rule; columns ending in ``_key`` are for filtering and colouring, not shown."""
    return _rules_table(rulebook.hash, rulebook)


@st.cache_data(show_spinner=False, max_entries=4)
def _drugs_table(rulebook_hash: str, _rulebook: Rulebook) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "id": drug.id,
                "中文名 name": drug.name,
                "别名 synonyms": "、".join(drug.names),
                "ATC": ", ".join(drug.atc),
                "规则 rules": MONOGRAPH if drug.monograph else DICTIONARY_ONLY,
                "类型 kind": KIND_LABELS.get(drug.kind, drug.kind),
                "类别 classes": ", ".join(drug.classes),
                "剂型→途径 forms": "；".join(
                    f"{wording.FORM_GROUPS.get(k, k)}：{'、'.join(wording.route_text(r) for r in v)}"
                    for k, v in drug.forms.items()
                ),
                "长期用药 chronic": "是" if drug.chronic else "",
                "抗菌药分级 tier": drug.antibacterial_tier or "",
                "管制 control": ", ".join(drug.control),
                "高警示 high alert": "是" if drug.high_alert else "",
                "基药 essential": "是" if drug.essential else "",
                "依据 source": drug.source,
                "文件 file": drug.where,
                "monograph_key": drug.monograph,
            }
            for drug in drugs(_rulebook)
        ]
    )


def drugs_table(rulebook: Rulebook) -> pd.DataFrame:
    """One row per drug of the rulebook: monographs and dictionary-only entries."""
    return _drugs_table(rulebook.hash, rulebook)


@st.cache_data(show_spinner=False, max_entries=64)
def _drug_ids_for(rulebook_hash: str, query: str, _rulebook: Rulebook) -> frozenset[str]:
    return frozenset(drug.id for drug in drugs(_rulebook) if drug.matches(query))


def drug_ids_for(rulebook: Rulebook, query: str) -> frozenset[str]:
    """The drugs ``query`` names: Chinese or English name, synonym, ATC code (prefix) or id."""
    return _drug_ids_for(rulebook.hash, query.strip(), rulebook)
