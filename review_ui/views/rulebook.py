"""规则库 Rulebook — browse drugs and rules with their sources; 试审: audit without queueing."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import streamlit as st

from review_ui import backend, ui
from rx_audit.errors import RxAuditError

backend.require_user()
settings = backend.settings_or_stop()
auditor = backend.auditor(settings)
rulebook = auditor.rulebook

st.title("📚 规则库 Rulebook")
st.caption(
    f"在用版本 live version `{auditor.rulebook_hash}` · {len(rulebook.drugs)} 种药品 drugs · "
    f"{len(rulebook.rules_by_id())} 条规则 rules · 目录 `{rulebook.root}`"
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


@st.cache_data(show_spinner=False, max_entries=8)
def rules_table(rulebook_hash: str) -> pd.DataFrame:
    # Keyed by the rulebook hash: a reload gives a new table, browsing never recomputes.
    rows = []
    for rule in rulebook.rules_by_id().values():
        rows.append(
            {
                "规则 rule": rule.id,
                "药品 drug": rule.drug or "",
                "类别 category": ui.category_label(rule.category),
                "等级 severity": ui.severity_label(rule.severity),
                "提示 message": rule.message,
                "来源文件 source": rule.source,
                "临床依据 reference": rule.reference or "",
                "category_key": rule.category,
                "missing_key": bool(rule.missing_field),
                "severity_key": rule.severity,
            }
        )
    return pd.DataFrame(rows)


@st.cache_data(show_spinner=False, max_entries=8)
def drugs_table(rulebook_hash: str) -> pd.DataFrame:
    rows = []
    for drug in sorted(rulebook.drugs.values(), key=lambda d: d.id):
        rows.append(
            {
                "id": drug.id,
                "中文名 name": drug.name,
                "别名 synonyms": "、".join(drug.names),
                "ATC": ", ".join(drug.atc),
                "类别 classes": ", ".join(drug.classes),
                "剂型→途径 forms": "; ".join(f"{k}: {', '.join(v)}" for k, v in drug.forms.items()),
                "长期用药 chronic": "是" if drug.chronic else "",
                "依据 source": drug.source,
                "文件 file": f"{drug.path}:{drug.line}",
            }
        )
    return pd.DataFrame(rows)


def show_result(result: Any) -> None:
    severity = result.severity.value if result.severity else None
    if result.flagged:
        st.error(
            f"需药师审核 flagged · 最高等级 {ui.severity_label(severity)} · {len(result.findings)} 条发现 findings"
        )
    elif result.findings:
        st.info(f"不拦截 not flagged · {len(result.findings)} 条提示 findings")
    else:
        st.success("未发现问题 no findings")
    for finding in result.findings:
        level = getattr(finding.severity, "value", finding.severity)
        box = {"critical": st.error, "warning": st.warning}.get(str(level), st.info)
        # The pasted prescription is outside text (drug names end up in messages and evidence).
        item = f"第{ui.md(finding.item)}项 item {ui.md(finding.item)} · " if finding.item else ""
        text = (
            f"**{ui.md(ui.severity_label(level))} · {ui.md(ui.category_label(finding.category))}**  \n"
            f"{item}{ui.md(finding.message)}  \n规则 {ui.md(finding.rule)} · 来源 {ui.md(finding.source)}"
        )
        if finding.reference:
            text += f"  \n依据 {ui.md(finding.reference)}"
        if finding.evidence:
            text += "  \n证据 evidence: " + ", ".join(f"{ui.md(k)}={ui.md(v)}" for k, v in finding.evidence.items())
        box(text)
    with st.expander("结果JSON result JSON"):
        st.json(result.to_contract())


def trial_audit(record: Any) -> None:
    try:
        result = auditor.audit(record)
    except RxAuditError as error:
        st.error(f"无法审核 cannot audit: {ui.md(error)}")
        return
    show_result(result)


tab_rules, tab_drugs, tab_trial = st.tabs(["规则 Rules", "药品 Drugs", "试审 Trial audit"])

with tab_rules:
    table = rules_table(auditor.rulebook_hash)
    c1, c2, c3, c4, c5 = st.columns([2, 2, 2, 3, 2])
    drug_ids = sorted({d for d in table["药品 drug"] if d}) if not table.empty else []
    drug_filter = c1.multiselect("药品 drug", drug_ids, key="rb_drug", placeholder="全部 all")
    category_filter = c2.multiselect(
        "类别 category", ui.CATEGORIES, format_func=ui.category_label, key="rb_cat", placeholder="全部 all"
    )
    severity_filter = c3.multiselect(
        "等级 severity", ui.SEVERITIES, format_func=ui.severity_label, key="rb_sev", placeholder="全部 all"
    )
    text_filter = c4.text_input("搜索 search (规则id/提示/来源)", key="rb_text")
    shown = table
    show_missing = c5.checkbox(
        "含缺数据提示 show missing-data rules",
        key="rb_missing",
        help="规则所需数据缺失时给出的提示（info）规则 (the info twins of rules whose data is missing)",
    )
    if not shown.empty:
        if not show_missing:
            shown = shown[~shown["missing_key"]]
        if drug_filter:
            shown = shown[shown["药品 drug"].isin(drug_filter)]
        if category_filter:
            shown = shown[shown["category_key"].isin(category_filter)]
        if severity_filter:
            shown = shown[shown["severity_key"].isin(severity_filter)]
        if text_filter:
            needle = text_filter.strip().lower()
            mask = shown[["规则 rule", "提示 message", "来源文件 source", "临床依据 reference"]].apply(
                lambda col: col.str.lower().str.contains(needle, regex=False)
            )
            shown = shown[mask.any(axis=1)]
    st.caption(f"{len(shown)} / {len(table)} 条规则 rules")
    st.dataframe(
        shown.style.apply(ui.row_style_by_severity(), axis=1),
        hide_index=True,
        width="stretch",
        column_order=[c for c in shown.columns if not c.endswith("_key")],
    )

with tab_drugs:
    drugs = drugs_table(auditor.rulebook_hash)
    st.caption(f"{len(drugs)} 种药品 drugs")
    st.dataframe(drugs, hide_index=True, width="stretch")

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
