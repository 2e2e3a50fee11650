"""规则库 Rulebook — browse drugs and rules with their sources; 试审: audit without queueing.

Drugs and rules come from rx_audit's public views (``review_ui.catalog``): messages with the drug's
Chinese name, a search by Chinese or English name, synonym, ATC code or rule id that finds every
rule of the drug, monographs and dictionary-only drugs told apart.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import streamlit as st

from review_ui import backend, catalog, ui, wording
from rx_audit import AuditResult, RxAuditError

backend.require_user()
settings = backend.settings_or_stop()
auditor = backend.auditor(settings)
rulebook = auditor.rulebook  # read once: a hot swap during this run cannot mix two versions
all_drugs = catalog.drugs(rulebook)
all_rules = catalog.rules(rulebook)
names = catalog.drug_names(rulebook)
monographs = sum(1 for drug in all_drugs if drug.monograph)

st.title(f"{ui.ICONS['rulebook']} 规则库 Rulebook")
st.caption(
    f"在用版本 live version `{rulebook.hash}` · {len(all_drugs)} 种药品 drugs（{monographs} 种有专论 with a "
    f"monograph）· {len(all_rules)} 条规则 rules · 目录 `{rulebook.root}`"
)

SAMPLE: dict[str, Any] = {
    "id": "TRIAL-0001",
    "issued_at": "2025-03-26T10:15:00+08:00",
    "visit_type": "outpatient",
    "facility": {"id": "LZH", "name": "凉州户镇分院", "level": "township"},
    "prescriber": {"id": "D007"},
    "department": "全科",
    "patient": {
        "id": "P-TRIAL",
        "sex": "F",
        "age_years": 72,
        "weight_kg": 58,
        "egfr": 24,
        "pregnant": False,
        "allergies": ["青霉素"],
    },
    "diagnoses": [{"code": "E11.900", "name": "2型糖尿病"}],
    "items": [
        {
            "id": "1",
            "drug": "二甲双胍",
            "form": "tablet",
            "strength": {"value": 500, "unit": "mg"},
            "dose": {"value": 1000, "unit": "mg"},
            "frequency": "tid",
            "route": "po",
            "days": 30,
        },
    ],
}


def show_result(result: AuditResult, sample: dict[str, Any] | str | None = None) -> None:
    # Severity is a StrEnum; the models may hold it as its plain value (str() gives the value either way).
    severity = str(result.severity) if result.severity else None
    if result.flagged:
        st.error(
            f"需药师审核 flagged · 最高等级 {ui.severity_label(severity)} · {len(result.findings)} 条发现 findings"
        )
    elif result.findings:
        st.info(f"不拦截 not flagged · {len(result.findings)} 条提示 findings")
    else:
        st.success("未发现问题 no findings")
    for finding in result.findings:
        level = str(finding.severity)
        box = {"critical": st.error, "warning": st.warning}.get(level, st.info)
        # The pasted prescription is outside text (drug names end up in messages and evidence).
        item = f"第{ui.md(finding.item)}项 item {ui.md(finding.item)} · " if finding.item else ""
        text = (
            f"**{ui.md(ui.severity_label(level))} · {ui.md(ui.category_label(finding.category))}**  \n"
            f"{item}{ui.md(wording.message_text(finding.message))}  \n"
            f"规则 {ui.md(finding.rule)} · 来源 {ui.md(finding.source)}"
        )
        if finding.reference:
            text += f"  \n依据 {ui.md(finding.reference)}"
        evidence = wording.evidence_text(finding.evidence, names, sample if isinstance(sample, dict) else {})
        if evidence:
            text += f"  \n依据数据 evidence：{ui.md(evidence)}"
        box(text, icon=ui.SEVERITY_ICONS.get(level, ui.SEVERITY_ICONS["info"]))
    with st.expander("结果JSON result JSON"):
        st.json(result.to_contract())


def trial_audit(record: dict[str, Any] | str) -> None:
    try:
        result = auditor.audit(record)
    except RxAuditError as error:
        st.error(f"无法审核 cannot audit: {ui.md(error)}")
        return
    show_result(result, record)


tab_rules, tab_drugs, tab_trial = st.tabs(["规则 Rules", "药品 Drugs", "试审 Trial audit"])

with tab_rules:
    table = catalog.rules_table(rulebook)
    c1, c2, c3 = st.columns([4, 2, 2])
    text_filter = c1.text_input(
        "搜索 search（药名/英文名/别名/ATC/规则id/提示/来源 drug name, synonym, ATC, rule id, message, source）",
        key="rb_text",
        placeholder="例 e.g. 二甲双胍 · metformin · A10BA02 · egfr",
    )
    category_filter = c2.multiselect(
        "类别 category", ui.CATEGORIES, format_func=ui.category_label, key="rb_cat", placeholder="全部 all"
    )
    severity_filter = c3.multiselect(
        "等级 severity", ui.SEVERITIES, format_func=ui.severity_label, key="rb_sev", placeholder="全部 all"
    )
    shown = table
    if not shown.empty:
        if category_filter:
            shown = shown[shown["category_key"].isin(category_filter)]
        if severity_filter:
            shown = shown[shown["severity_key"].isin(severity_filter)]
        if text_filter.strip():
            # Every rule of the drugs the text names (any name, synonym, ATC) or whose id has it…
            of_drug = shown["规则 rule"].isin(catalog.rule_ids_for(rulebook, text_filter))
            # …and, as before, rules whose message, source or reference mentions it.
            needle = text_filter.strip().lower()
            in_text = shown[["提示 message", "来源文件 source", "临床依据 reference"]].apply(
                lambda col: col.str.lower().str.contains(needle, regex=False)
            )
            shown = shown[of_drug | in_text.any(axis=1)]
    st.caption(f"{len(shown)} / {len(table)} 条规则 rules")
    st.dataframe(
        shown.style.apply(ui.row_style_by_severity(), axis=1),
        hide_index=True,
        width="stretch",
        column_order=[c for c in shown.columns if not c.endswith("_key")],
    )

with tab_drugs:
    drugs = catalog.drugs_table(rulebook)
    d1, d2 = st.columns([4, 3])
    drug_text = d1.text_input(
        "搜索药品 find a drug（中文名/英文名/别名/ATC Chinese or English name, synonym, ATC）", key="rb_drug_text"
    )
    which = d2.segmented_control(
        "规则 rules",
        ["全部 all", catalog.MONOGRAPH, catalog.DICTIONARY_ONLY],
        default="全部 all",
        key="rb_drug_kind",
        help="专论：有本药的剂量等专属规则；仅词典：按类别规则（过敏、相互作用、重复用药）审核，剂量未核对 "
        "(monograph: the drug's own rules; dictionary only: audited by the class rules, dose not checked)",
    )
    shown_drugs = drugs
    if not shown_drugs.empty:
        if which == catalog.MONOGRAPH:
            shown_drugs = shown_drugs[shown_drugs["monograph_key"]]
        elif which == catalog.DICTIONARY_ONLY:
            shown_drugs = shown_drugs[~shown_drugs["monograph_key"]]
        if drug_text.strip():
            shown_drugs = shown_drugs[shown_drugs["id"].isin(catalog.drug_ids_for(rulebook, drug_text))]
    st.caption(
        f"{len(shown_drugs)} / {len(drugs)} 种药品 drugs · {monographs} 种有专论 monograph · "
        f"{len(drugs) - monographs} 种仅词典 dictionary only"
    )
    st.dataframe(
        shown_drugs,
        hide_index=True,
        width="stretch",
        column_order=[c for c in shown_drugs.columns if not c.endswith("_key")],
    )

with tab_trial:
    st.caption("试审不会进入审方队列 (a trial audit is not queued).")
    mode = st.segmented_control(
        "输入方式 input", ["粘贴JSON paste JSON", "填写 fill in"], default="粘贴JSON paste JSON", key="trial_mode"
    )
    if mode == "填写 fill in":
        with st.form("trial_form"):
            c1, c2, c3, c4 = st.columns(4)
            visit = c1.selectbox("就诊类型 visit", ["outpatient", "emergency", "inpatient", "chronic"])
            sex = c2.selectbox("性别 sex", ["F", "M", "U"], format_func=lambda s: ui.SEX_LABELS[s])
            age = c3.number_input("年龄 age (岁)", min_value=0.0, max_value=150.0, value=60.0)
            weight = c4.number_input("体重 weight (kg, 0=未知)", min_value=0.0, max_value=500.0, value=0.0)
            c5, c6, c7, c8 = st.columns(4)
            egfr = c5.number_input("eGFR (0=未知)", min_value=0.0, max_value=300.0, value=0.0)
            pregnant = c6.checkbox("妊娠 pregnant")
            lactating = c7.checkbox("哺乳 lactating")
            allergies = c8.text_input("过敏 allergies (逗号分隔)")
            diagnoses = st.text_input("诊断 ICD-10 (逗号分隔)", value="E11.900")
            items = st.data_editor(
                pd.DataFrame(
                    [
                        {
                            "drug": "二甲双胍",
                            "form": "tablet",
                            "strength_mg": 500.0,
                            "dose_mg": 500.0,
                            "frequency": "tid",
                            "route": "po",
                            "days": 30.0,
                        }
                    ]
                ),
                num_rows="dynamic",
                key="trial_items",
                width="stretch",
            )
            submitted = st.form_submit_button("试审 Audit", type="primary")
        if submitted:
            patient: dict[str, Any] = {
                "id": "P-TRIAL",
                "sex": sex,
                "age_years": age,
                "pregnant": pregnant,
                "lactating": lactating,
                "allergies": [a.strip() for a in allergies.replace("，", ",").split(",") if a.strip()],
            }
            if weight > 0:
                patient["weight_kg"] = weight
            if egfr > 0:
                patient["egfr"] = egfr
            record_items = []
            for position, row in enumerate(items.to_dict("records"), start=1):
                if not row.get("drug"):
                    continue
                item: dict[str, Any] = {
                    "id": str(position),
                    "drug": row["drug"],
                    "form": row.get("form"),
                    "frequency": row.get("frequency"),
                    "route": row.get("route"),
                }
                if pd.notna(row.get("strength_mg")):
                    item["strength"] = {"value": row["strength_mg"], "unit": "mg"}
                if pd.notna(row.get("dose_mg")):
                    item["dose"] = {"value": row["dose_mg"], "unit": "mg"}
                if pd.notna(row.get("days")):
                    item["days"] = row["days"]
                record_items.append(item)
            trial_audit(
                {
                    "id": "TRIAL-FORM",
                    "visit_type": visit,
                    "patient": patient,
                    "diagnoses": [c.strip() for c in diagnoses.replace("，", ",").split(",") if c.strip()],
                    "items": record_items,
                }
            )
    else:
        with st.form("trial_json"):
            text = st.text_area(
                "处方JSON prescription JSON (CONTRACT §1)",
                value=json.dumps(SAMPLE, ensure_ascii=False, indent=2),
                height=360,
                key="trial_text",
            )
            submitted = st.form_submit_button("试审 Audit", type="primary")
        if submitted:
            trial_audit(text)
