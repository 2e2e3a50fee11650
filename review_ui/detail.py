"""Rendering one prescription for a pharmacist: patient, diagnoses, the items with each finding on
its item(s), the findings with rule, evidence in words, source and reference; the version chain
with what the doctor changed, the messages between pharmacist and doctor, and the patient's
earlier prescriptions (flagged or not) a click away.

Shared by the workbench (which adds the decision forms) and search (read-only).
The patient's name is never shown or logged, even when the HIS sends one.

Everything here came from an HIS (the prescription payload; findings quote its drug names) or from
a person (comments, double-sign reasons): in any Markdown-rendering call it goes through
``ui.md``; tables are dataframes (cells never render Markdown).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd
import streamlit as st

from review_ui import ui, wording
from rx_audit import NotFoundError, RxAuditError, parse_prescription

if TYPE_CHECKING:
    from review_ui.service import ReviewService
    from rx_audit import Decision, ReviewDetail

Names = Mapping[str, str]


def patient_age(prescription: dict[str, Any]) -> float | None:
    patient = prescription.get("patient") or {}
    if isinstance(patient.get("age_years"), (int, float)):
        return float(patient["age_years"])
    try:
        return parse_prescription(prescription).age_years_at_issue()
    except RxAuditError:
        return None


def _number(value: Any, unit: str = "") -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}{unit}"
    return "未填"


def patient_block(prescription: dict[str, Any]) -> None:
    patient = prescription.get("patient") or {}
    age = patient_age(prescription)
    c = st.columns(7)
    c[0].metric("年龄 age", f"{age:.3g}岁" if age is not None else "未填")
    c[1].metric("性别 sex", ui.SEX_LABELS.get(str(patient.get("sex")), "未填"))
    c[2].metric("体重 weight", _number(patient.get("weight_kg"), " kg"))
    c[3].metric("eGFR", _number(patient.get("egfr")), help="mL/min/1.73m²")
    c[4].metric("妊娠 pregnant", ui.yes_no(patient.get("pregnant")))
    c[5].metric("哺乳 lactating", ui.yes_no(patient.get("lactating")))
    c[6].metric("肝功能 hepatic", ui.md(wording.hepatic_text(patient.get("hepatic_impairment"))))
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
        return f"{value['value']:g} {value.get('unit') or ''}".strip()
    return ""


def _text(value: Any) -> str:
    """A cell: never the word ``None``."""
    if value is None:
        return ""
    return wording.number(value) if isinstance(value, (int, float)) else str(value)


def _worst(findings: list[dict[str, Any]]) -> str | None:
    return ui.worst_severity(f.get("severity") for f in findings)


def _most_severe_first(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(findings, key=lambda f: -ui.severity_rank(f.get("severity")))


def _severity_zh(value: Any) -> str:
    severity = ui.severity_of(value)
    return severity.label_zh if severity is not None else "?"


def _item_id(item: dict[str, Any], position: int) -> str:
    return str(item.get("id") or position)


def item_rows(prescription: dict[str, Any], findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per item, every finding on each item it concerns (both lines of an interaction)."""
    by_item: dict[str, list[dict[str, Any]]] = {}
    for finding in findings:
        for item_id in wording.finding_items(finding):
            by_item.setdefault(item_id, []).append(finding)
    rows = []
    for position, item in enumerate(prescription.get("items") or [], start=1):
        if not isinstance(item, dict):
            continue
        item_findings = _most_severe_first(by_item.get(_item_id(item, position), []))
        rows.append(
            {
                "#": _item_id(item, position),
                "药品 drug": _text(item.get("drug")),
                "剂型 form": _text(item.get("form")),
                "规格 strength": _quantity(item.get("strength")),
                "单次剂量 dose": _quantity(item.get("dose")),
                "频次 freq": wording.frequency_text(item.get("frequency")),
                "途径 route": wording.route_text(item.get("route")),
                "天数 days": _text(item.get("days")),
                "数量 qty": _quantity(item.get("quantity")),
                "问题 findings": "；".join(
                    f"【{_severity_zh(f.get('severity'))}】{wording.message_text(f.get('message'))}"
                    for f in item_findings
                )
                or "—",
                "severity_key": _worst(item_findings),
            }
        )
    return rows


def items_block(prescription: dict[str, Any], findings: list[dict[str, Any]]) -> None:
    """The items as a table, each row coloured by its worst finding, the findings on their items."""
    frame = pd.DataFrame(item_rows(prescription, findings))
    if frame.empty:
        st.caption("无药品 (no items)")
        return
    st.dataframe(
        frame.style.apply(ui.row_style_by_severity(), axis=1),
        hide_index=True,
        width="stretch",
        column_order=[c for c in frame.columns if c != "severity_key"],
    )


def _where(finding: dict[str, Any], prescription: dict[str, Any]) -> str:
    items = wording.finding_items(finding)
    if not items:
        return "整张处方 whole prescription"
    drugs = {
        _item_id(item, n): item.get("drug")
        for n, item in enumerate(prescription.get("items") or [], start=1)
        if isinstance(item, dict)
    }
    return "、".join(f"第{ui.md(i)}项 {ui.md(drugs.get(i) or '')}".strip() for i in items)


def findings_block(findings: list[dict[str, Any]], prescription: dict[str, Any], names: Names) -> None:
    """Each finding, most severe first: message, category, the item(s), evidence in words, rule, source."""
    if not findings:
        st.caption("无发现 (no findings)")
    for finding in _most_severe_first(findings):
        level = finding.get("severity")
        box = {"critical": st.error, "warning": st.warning}.get(str(level), st.info)
        lines = [
            f"**{ui.md(ui.severity_label(level))} · {ui.md(ui.category_label(finding.get('category')))}** · "
            f"{_where(finding, prescription)}",
            ui.md(wording.message_text(finding.get("message") or "")),
        ]
        evidence = wording.evidence_text(finding.get("evidence"), names, prescription)
        if evidence:
            lines.append(f"依据数据 evidence：{ui.md(evidence)}")
        lines.append(f"规则 rule {ui.md(finding.get('rule'))} · 来源 source {ui.md(finding.get('source'))}")
        if finding.get("reference"):
            lines.append(f"临床依据 reference：{ui.md(finding['reference'])}")
        box("  \n".join(lines), icon=ui.SEVERITY_ICONS.get(str(level), ui.SEVERITY_ICONS["info"]))


# --- what the doctor changed between two versions ------------------------------------------------

_ITEM_FIELDS = {
    "drug": "药品",
    "form": "剂型",
    "strength": "规格",
    "dose": "单次剂量",
    "frequency": "频次",
    "route": "途径",
    "days": "天数",
    "quantity": "数量",
}


def _field_text(key: str, value: Any) -> str:
    if isinstance(value, dict):
        return _quantity(value) or str(value)
    if key == "frequency":
        return wording.frequency_text(value)
    if key == "route":
        return wording.route_text(value)
    return _text(value)


def _items_by_drug(prescription: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for position, item in enumerate(prescription.get("items") or [], start=1):
        if isinstance(item, dict):
            out[str(item.get("drug") or f"#{position}")] = item
    return out


def version_diff(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, str]]:
    """What changed from ``before`` to ``after``: items added, removed, changed field by field (matched
    by drug name), and the patient and diagnoses. Rows: 变更 / 内容 / 原 / 现."""
    rows: list[dict[str, str]] = []
    old, new = _items_by_drug(before), _items_by_drug(after)
    for drug in old.keys() - new.keys():
        rows.append(
            {"变更 change": "删除 removed", "内容 what": drug, "原 before": _item_summary(old[drug]), "现 after": ""}
        )
    for drug in new.keys() - old.keys():
        rows.append(
            {"变更 change": "新增 added", "内容 what": drug, "原 before": "", "现 after": _item_summary(new[drug])}
        )
    for drug in sorted(old.keys() & new.keys()):
        for key, label in _ITEM_FIELDS.items():
            a, b = old[drug].get(key), new[drug].get(key)
            if a != b:
                rows.append(
                    {
                        "变更 change": "修改 changed",
                        "内容 what": f"{drug} · {label}",
                        "原 before": _field_text(key, a),
                        "现 after": _field_text(key, b),
                    }
                )
    old_dx = wording.diagnosis_text(
        [d.get("code") for d in before.get("diagnoses") or [] if isinstance(d, dict)], before
    )
    new_dx = wording.diagnosis_text([d.get("code") for d in after.get("diagnoses") or [] if isinstance(d, dict)], after)
    if old_dx != new_dx:
        rows.append(
            {"变更 change": "修改 changed", "内容 what": "诊断 diagnoses", "原 before": old_dx, "现 after": new_dx}
        )
    before_patient, after_patient = before.get("patient") or {}, after.get("patient") or {}
    for key, label in (("egfr", "eGFR"), ("weight_kg", "体重"), ("allergies", "过敏史"), ("pregnant", "妊娠")):
        a, b = before_patient.get(key), after_patient.get(key)
        if a != b:
            rows.append(
                {
                    "变更 change": "修改 changed",
                    "内容 what": f"患者 {label}",
                    "原 before": _text(a),
                    "现 after": _text(b),
                }
            )
    return rows


def _item_summary(item: dict[str, Any]) -> str:
    parts = [
        _quantity(item.get("dose")),
        wording.frequency_text(item.get("frequency")),
        wording.route_text(item.get("route")),
        f"{_text(item.get('days'))}天" if item.get("days") else "",
    ]
    return " ".join(p for p in parts if p)


# --- history: versions, decisions, messages -------------------------------------------------------

_DIRECTION = {
    ("pharmacist", "return"): "药师 → 医生",
    ("doctor", "double_sign"): "医生 → 药师",
    ("pharmacist", "approve"): "药师",
    ("system", "timeout_pass"): "系统",
}


def messages_frame(decisions: list[Decision], reasons: Mapping[str, str]) -> pd.DataFrame:
    """The messages between pharmacist and doctor: return notes and double-sign reasons, in order."""
    return pd.DataFrame(
        [
            {
                "时间 time": ui.local_time(d.at),
                "版本 v": d.version,
                "方向 direction": _DIRECTION.get((d.role, d.action), d.role),
                "人员 by": d.actor,
                "结论 action": ui.ACTION_LABELS.get(d.action, d.action),
                "原因 reason": reasons.get(d.reason_code or "", d.reason_code or ""),
                "内容 message": d.comment or "",
            }
            for d in decisions
        ]
    )


def versions_block(versions: list[Any], current_version: int, open_version: Callable[[int], None] | None) -> None:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "版本 v": v.version,
                    "接收 received": ui.local_time(v.received_at),
                    "审核结果 result": ui.severity_label(v.severity) if v.item_id else "未拦截 not flagged",
                    "状态 status": ui.status_label(v.status) if v.status else "无需审核 no review",
                    "当前 current": "◀ 当前" if v.version == current_version else "",
                }
                for v in versions
            ]
        ),
        hide_index=True,
        width="stretch",
    )


def diff_block(service: ReviewService, prescription_id: str, version: int, payload: dict[str, Any], key: str) -> None:
    """What the doctor changed from the previous version to this one."""
    if version <= 1:
        return
    try:
        previous = service.prescription(prescription_id, version - 1)
    except NotFoundError:
        return
    rows = version_diff(previous.prescription, payload)
    previous_status = previous.item.status if previous.item is not None else None
    st.markdown(
        f"{ui.ICONS['diff']} **医生的修改 what the doctor changed** · 第{version - 1}版 → 第{version}版"
        + (f"（第{version - 1}版 {ui.md(ui.status_label(previous_status))}）" if previous_status else "")
    )
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key=f"{key}_diff")
    else:
        st.caption("内容未变（仅重新提交）(no change in content)")


def history_block(
    detail: ReviewDetail, service: ReviewService | None = None, reasons: Mapping[str, str] | None = None
) -> None:
    """The version chain with the doctor's changes, and the messages and decisions on the prescription."""
    item = detail.item
    if len(detail.versions) <= 1 and not detail.decisions:
        st.caption("首次提交，无早期版本或审核记录 (first version; no earlier decisions).")
        return
    if detail.decisions:
        st.markdown(f"{ui.ICONS['history']} **审核记录与药师—医生沟通 decisions and messages**")
        st.dataframe(messages_frame(detail.decisions, reasons or {}), hide_index=True, width="stretch")
    if len(detail.versions) > 1:
        st.markdown("**版本链 versions**")
        versions_block(detail.versions, item.version, None)
        if service is not None:
            diff_block(service, item.prescription_id, item.version, detail.prescription, f"d{item.id}")


def header_block(detail: ReviewDetail) -> None:
    item = detail.item
    prescription = detail.prescription
    header_line(prescription, item.severity, ui.status_label(item.status), item.version, item.facility_id)
    if item.double_sign_reason:
        st.warning(
            f"医生双签理由 doctor's double-sign reason: {ui.md(item.double_sign_reason)}", icon=ui.ICONS["double_sign"]
        )


def header_line(
    prescription: dict[str, Any], severity: str | None, status: str, version: Any, facility_id: str | None
) -> None:
    facility = prescription.get("facility") or {}
    prescriber = prescription.get("prescriber") or {}
    patient = prescription.get("patient") or {}
    facility_name = facility.get("name") if isinstance(facility, dict) else None
    st.markdown(
        (ui.severity_md(severity) if severity else ":gray-badge[未拦截 not flagged]")
        + f" · {ui.md(status)}"
        + (f" · 第{version}版 v{version}" if isinstance(version, int) and version > 1 else "")
        + f" · 机构 {ui.md(facility_name or facility_id or None)}"
        f" · 科室 {ui.md(prescription.get('department') or None)}"
        f" · 医生 {ui.md((prescriber.get('id') if isinstance(prescriber, dict) else None) or None)}"
        f" · 开具 {ui.md(ui.format_time(prescription.get('issued_at')))}"
        f" · {ui.md(wording.visit_text(prescription.get('visit_type')))}"
        f" · 患者 {ui.md((patient.get('id') if isinstance(patient, dict) else None) or None)}"
    )


def findings_of(detail: ReviewDetail) -> list[dict[str, Any]]:
    """The audit findings stored with the item (contract dicts: rule, severity, item, message…)."""
    return findings_in(detail.result)


def findings_in(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    findings = (result or {}).get("findings")
    return [f for f in findings if isinstance(f, dict)] if isinstance(findings, list) else []


# --- the patient's earlier prescriptions -------------------------------------------------------------


def patient_history_block(
    service: ReviewService, prescription: dict[str, Any], version: int, names: Names, key: str
) -> None:
    """The patient's other prescriptions and versions (flagged or not, with their results); one opens
    below on selection."""
    patient = prescription.get("patient") or {}
    patient_id = patient.get("id") if isinstance(patient, dict) else None
    if not patient_id:
        st.caption("处方未写患者号 (no patient id)")
        return
    hits = [
        h
        for h in service.patient_history(str(patient_id), limit=30)
        if not (h.prescription_id == prescription.get("id") and h.version == version)
    ]
    if not hits:
        st.caption("该患者没有其他处方记录 (no other prescriptions of this patient)")
        return
    frame = pd.DataFrame(
        [
            {
                "开具 issued": ui.local_time(h.issued_at) if h.issued_at else (h.day or ""),
                "处方 prescription": h.prescription_id,
                "版本 v": h.version,
                "审核结果 result": ui.severity_label(h.severity) if h.flagged else "未拦截 not flagged",
                "状态 status": ui.status_label(h.status) if h.status else "无需审核 no review",
                "机构 facility": h.facility_name or h.facility_id or "",
                "医生 prescriber": h.prescriber_id or "",
                "severity_key": h.severity if h.flagged else None,
            }
            for h in hits
        ]
    )
    event = st.dataframe(
        frame.style.apply(ui.row_style_by_severity(), axis=1),
        hide_index=True,
        width="stretch",
        column_order=[c for c in frame.columns if c != "severity_key"],
        on_select="rerun",
        selection_mode="single-row",
        key=f"{key}_patient_table",
    )
    st.caption("选中一行查看该处方 (select a row to read it)")
    rows = event.selection.rows if event is not None else []
    if rows:
        chosen = hits[rows[0]]
        show_prescription(service, chosen.prescription_id, chosen.version, names, key=f"{key}_p")


def show_prescription(
    service: ReviewService, prescription_id: str, version: int | None, names: Names, key: str
) -> None:
    """Any stored prescription version, read-only: flagged or not, its findings, versions and the
    doctor's changes; a corrected resubmission that was not flagged links to the returned version."""
    try:
        record = service.prescription(prescription_id, version)
    except NotFoundError:
        st.warning("记录不存在 (not found).")
        return
    with st.container(border=True):
        st.markdown(f"**处方 {ui.md(record.prescription_id)}** · 第{record.version}版")
        findings = findings_in(record.result)
        status = ui.status_label(record.item.status) if record.item is not None else "无需药师审核 no review needed"
        header_line(record.prescription, record.item.severity if record.item else None, status, record.version, None)
        patient_block(record.prescription)
        items_block(record.prescription, findings)
        if findings:
            findings_block(findings, record.prescription, names)
        returned = [v for v in record.versions if v.version < record.version and v.status == "returned"]
        if record.item is None and returned:
            st.info(
                f"本版为退回后医生修改的第{record.version}版，未再拦截；第{returned[-1].version}版曾被药师退回 "
                "(a corrected resubmission: not flagged; the earlier version was returned)",
                icon=ui.ICONS["history"],
            )
        if len(record.versions) > 1:
            versions_block(record.versions, record.version, None)
            diff_block(service, record.prescription_id, record.version, record.prescription, key)
            others = [v.version for v in record.versions if v.version != record.version]
            chosen = st.selectbox(
                "查看其他版本 open another version",
                [None, *others],
                format_func=lambda v: "—" if v is None else f"第{v}版 v{v}",
                key=f"{key}_other_version",
            )
            if chosen is not None:
                show_prescription(service, record.prescription_id, int(chosen), names, key=f"{key}_v{chosen}")
        if record.decisions:
            st.dataframe(messages_frame(record.decisions, {}), hide_index=True, width="stretch")


def show_detail(
    detail: ReviewDetail,
    names: Names | None = None,
    service: ReviewService | None = None,
    history_expanded: bool = False,
    reasons: Mapping[str, str] | None = None,
) -> None:
    """Everything about one item except the decision forms."""
    prescription = detail.prescription
    findings = findings_of(detail)
    names = names or {}
    header_block(detail)
    patient_block(prescription)
    st.markdown("##### 药品 Items")
    items_block(prescription, findings)
    st.markdown("##### 审核发现 Findings")
    findings_block(findings, prescription, names)
    has_history = len(detail.versions) > 1 or bool(detail.decisions)
    with st.expander(
        "版本、修改与药师—医生沟通 Versions, changes and messages" + ("" if has_history else "（无 none）"),
        expanded=history_expanded or len(detail.versions) > 1,
        icon=ui.ICONS["history"],
    ):
        history_block(detail, service, reasons)
    # A toggle, not an expander: the patient's history is read only when asked for (an expander's body
    # runs on every rerun, and the workbench reruns often).
    if service is not None and st.toggle("患者既往处方 patient's earlier prescriptions", key=f"hist_{detail.item.id}"):
        patient_history_block(service, prescription, detail.item.version, names, key=f"ph{detail.item.id}")
