"""Rendering one review item (``ReviewQueue.get`` → ``ReviewDetail``): patient, diagnoses, the
items with each finding on its item, the findings with rule, evidence, source and reference,
and the earlier versions and decisions of the same prescription.

Shared by the workbench (which adds the decision forms) and search (read-only).
The patient's name is never shown or logged, even when the HIS sends one.

Everything here came from an HIS (the prescription payload; findings quote its drug names) or from
a person (comments, double-sign reasons): in any Markdown-rendering call it goes through
``ui.md``; tables are dataframes (cells never render Markdown).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd
import streamlit as st

from review_ui import ui
from rx_audit import RxAuditError, parse_prescription

if TYPE_CHECKING:
    from rx_audit import ReviewDetail


def patient_age(prescription: dict[str, Any]) -> float | None:
    patient = prescription.get("patient") or {}
    if isinstance(patient.get("age_years"), (int, float)):
        return float(patient["age_years"])
    try:
        return parse_prescription(prescription).age_years_at_issue()
    except RxAuditError:
        return None


def _number(value: Any, unit: str = "") -> str:
    if isinstance(value, (int, float)):
        return f"{value:g}{unit}"
    return "—"


def patient_block(prescription: dict[str, Any]) -> None:
    patient = prescription.get("patient") or {}
    age = patient_age(prescription)
    c = st.columns(7)
    c[0].metric("年龄 age", f"{age:.3g}岁" if age is not None else "—")
    c[1].metric("性别 sex", ui.SEX_LABELS.get(str(patient.get("sex")), "—"))
    c[2].metric("体重 weight", _number(patient.get("weight_kg"), " kg"))
    c[3].metric("eGFR", _number(patient.get("egfr")))
    c[4].metric("妊娠 pregnant", ui.yes_no(patient.get("pregnant")))
    c[5].metric("哺乳 lactating", ui.yes_no(patient.get("lactating")))
    c[6].metric("肝功能 hepatic", ui.md(patient.get("hepatic_impairment") or None))
    allergies = patient.get("allergies")
    if allergies:
        allergy_text = "、".join(ui.md(a) for a in allergies) if isinstance(allergies, list) else ui.md(allergies)
    else:
        allergy_text = "无 none" if allergies == [] else "未填 not recorded"
    st.markdown(f"**过敏史 allergies:** {allergy_text}")
    diagnoses = []
    for entry in prescription.get("diagnoses") or []:
        if isinstance(entry, dict):
            name = ui.md(entry.get("name")) if entry.get("name") else ""
            diagnoses.append(f"{ui.md(entry.get('code') or '?')} {name}".strip())
        else:
            diagnoses.append(ui.md(entry))
    st.markdown("**诊断 diagnoses:** " + ("；".join(diagnoses) or "无 none"))


def _quantity(value: Any) -> str:
    if isinstance(value, dict) and isinstance(value.get("value"), (int, float)):
        return f"{value['value']:g} {value.get('unit', '')}".strip()
    return ""


def _worst(findings: list[dict[str, Any]]) -> str | None:
    return ui.worst_severity(f.get("severity") for f in findings)


def _most_severe_first(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(findings, key=lambda f: -ui.severity_rank(f.get("severity")))


def items_block(prescription: dict[str, Any], findings: list[dict[str, Any]]) -> None:
    """The items as a table, each row coloured by its worst finding, the findings on their item."""
    by_item: dict[str, list[dict[str, Any]]] = {}
    for finding in findings:
        by_item.setdefault(str(finding.get("item") or ""), []).append(finding)
    rows = []
    for position, item in enumerate(prescription.get("items") or [], start=1):
        item_id = str(item.get("id") or position)
        item_findings = _most_severe_first(by_item.get(item_id, []))
        rows.append(
            {
                "#": item_id,
                "药品 drug": item.get("drug"),
                "剂型 form": item.get("form") or "",
                "规格 strength": _quantity(item.get("strength")),
                "单次剂量 dose": _quantity(item.get("dose")),
                "频次 freq": item.get("frequency") or "",
                "途径 route": item.get("route") or "",
                "天数 days": item.get("days"),
                "数量 qty": _quantity(item.get("quantity")),
                "问题 findings": "；".join(
                    f"{ui.severity_icon(f.get('severity'))}{f.get('message')}" for f in item_findings
                )
                or "—",
                "severity_key": _worst(item_findings),
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        st.caption("无药品 (no items)")
        return
    st.dataframe(
        frame.style.apply(ui.row_style_by_severity(), axis=1),
        hide_index=True,
        width="stretch",
        column_order=[c for c in frame.columns if c != "severity_key"],
    )


def findings_block(findings: list[dict[str, Any]]) -> None:
    """Each finding, most severe first: message, category, rule, evidence, source, reference."""
    if not findings:
        st.caption("无发现 (no findings)")
    for finding in _most_severe_first(findings):
        level = finding.get("severity")
        box = {"critical": st.error, "warning": st.warning}.get(str(level), st.info)
        item = ui.md(finding.get("item")) if finding.get("item") else None
        where = f"第{item}项 item {item}" if item else "整张处方 whole prescription"
        lines = [
            f"**{ui.md(ui.severity_label(level))} · {ui.md(ui.category_label(finding.get('category')))}** · {where}",
            ui.md(finding.get("message") or ""),
            f"规则 rule {ui.md(finding.get('rule'))} · 来源 source {ui.md(finding.get('source'))}",
        ]
        evidence = finding.get("evidence") or {}
        if isinstance(evidence, dict) and evidence:
            lines.append("证据 evidence: " + ", ".join(f"{ui.md(k)} = {ui.md(v)}" for k, v in evidence.items()))
        if finding.get("reference"):
            lines.append(f"临床依据 reference: {ui.md(finding['reference'])}")
        box("  \n".join(lines))


def history_block(detail: ReviewDetail) -> None:
    """Earlier (and later) versions of the same prescription and every decision taken on it."""
    current = detail.item.id
    versions = detail.versions
    decisions = detail.decisions
    if len(versions) <= 1 and not decisions:
        st.caption("首次提交，无早期版本或审核记录 (first version; no earlier decisions).")
        return
    if decisions:
        st.markdown("**审核与双签记录 decisions**")
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "时间 time": ui.local_time(d.at),
                        "版本 v": d.version,
                        "人员 by": d.actor,
                        "角色 role": d.role,
                        "结论 action": ui.ACTION_LABELS.get(d.action, d.action),
                        "原因 reason": d.reason_code or "",
                        "备注 comment": d.comment or "",
                    }
                    for d in decisions
                ]
            ),
            hide_index=True,
            width="stretch",
        )
    if versions:
        st.markdown("**版本 versions**")
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "版本 v": v.version,
                        "接收 received": ui.local_time(v.received_at),
                        "等级 severity": ui.severity_label(v.severity),
                        "状态 status": ui.status_label(v.status),
                        "当前 current": "◀" if v.item_id == current else "",
                        "规则库 rulebook": (v.rulebook or "")[:19],
                    }
                    for v in versions
                ]
            ),
            hide_index=True,
            width="stretch",
        )


def header_block(detail: ReviewDetail) -> None:
    item = detail.item
    prescription = detail.prescription
    facility = prescription.get("facility") or {}
    prescriber = prescription.get("prescriber") or {}
    patient = prescription.get("patient") or {}
    version = item.version
    facility_name = facility.get("name") if isinstance(facility, dict) else None
    st.markdown(
        f"{ui.severity_md(item.severity)} · {ui.md(ui.status_label(item.status))}"
        + (f" · 第{version}版 v{version}" if isinstance(version, int) and version > 1 else "")
        + f" · 机构 {ui.md(facility_name or item.facility_id or None)}"
        f" · 科室 {ui.md(prescription.get('department') or None)}"
        f" · 医生 {ui.md((prescriber.get('id') if isinstance(prescriber, dict) else None) or None)}"
        f" · 开具 {ui.md(ui.format_time(prescription.get('issued_at')))}"
        f" · 就诊 {ui.md(prescription.get('visit_type') or None)}"
        f" · 患者 {ui.md((patient.get('id') if isinstance(patient, dict) else None) or None)}"
    )
    if item.double_sign_reason:
        st.warning(f"医生双签理由 doctor's double-sign reason: {ui.md(item.double_sign_reason)}", icon="✍️")


def findings_of(detail: ReviewDetail) -> list[dict[str, Any]]:
    """The audit findings stored with the item (contract dicts: rule, severity, item, message…)."""
    findings = detail.result.get("findings")
    return [f for f in findings if isinstance(f, dict)] if isinstance(findings, list) else []


def show_detail(detail: ReviewDetail, history_expanded: bool = False) -> None:
    """Everything about one item except the decision forms."""
    prescription = detail.prescription
    findings = findings_of(detail)
    header_block(detail)
    patient_block(prescription)
    st.markdown("##### 药品 Items")
    items_block(prescription, findings)
    st.markdown("##### 审核发现 Findings")
    findings_block(findings)
    with st.expander("早期版本与审核记录 Earlier versions and decisions", expanded=history_expanded):
        history_block(detail)
