"""检索 Search — by prescription id, patient id, prescriber, facility, date and verdict (paged).

``?item=<id>`` opens that item's detail (a link a pharmacist can share); like every read here it
goes through the user's scoped service, so an item of another facility is simply "not found".
"""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import streamlit as st

from review_ui import backend, catalog, ui
from review_ui import detail as detail_view
from rx_audit import NotFoundError

user = backend.require_user()
settings = backend.settings_or_stop()
service = backend.service(settings, user)  # every queue call scoped to this user's facilities
names = catalog.drug_names(backend.auditor(settings).rulebook)

st.title(f"{ui.ICONS['search']} 检索 Search")


def show_item(item_id: int) -> None:
    try:
        detail = service.get(item_id)
    except NotFoundError:  # also: outside this pharmacist's facilities — indistinguishable on purpose
        st.warning("记录不存在 (not found).")
        return
    st.divider()
    st.subheader(f"处方 {ui.md(detail.item.prescription_id)}")
    detail_view.show_detail(detail, names, service, history_expanded=True)


VERDICTS: list[str | None] = [None, *ui.VERDICTS]  # any; flagged or clean; one of the queue's statuses

with st.form("search"):
    c1, c2, c3 = st.columns(3)
    prescription_id = c1.text_input("处方号 prescription id", key="s_rx").strip() or None
    patient_id = c2.text_input("患者号 patient id", key="s_patient").strip() or None
    prescriber_id = c3.text_input("医生 prescriber id", key="s_prescriber").strip() or None
    c4, c5, c6 = st.columns(3)
    facility_id = c4.text_input("机构 facility id", key="s_facility").strip() or None
    with c5:
        use_dates = st.checkbox("按开具日期 filter by issue date", key="s_use_dates")
        dates = st.date_input(
            "日期 date range",
            value=(ui.today() - timedelta(days=30), ui.today()),
            key="s_dates",
            label_visibility="collapsed",
        )
    verdict = c6.selectbox(
        "结论 verdict", VERDICTS, key="s_verdict", format_func=lambda v: "全部 all" if v is None else ui.status_label(v)
    )
    submitted = st.form_submit_button("检索 Search", type="primary")

if submitted:
    st.session_state["s_page"] = 0
    st.session_state["s_query"] = {
        "prescription_id": prescription_id,
        "patient_id": patient_id,
        "prescriber_id": prescriber_id,
        "facility_id": facility_id,
        "date_from": dates[0] if use_dates and isinstance(dates, (tuple, list)) and len(dates) > 0 else None,
        "date_to": dates[1] if use_dates and isinstance(dates, (tuple, list)) and len(dates) > 1 else None,
        "verdict": verdict,
    }

query = st.session_state.get("s_query")
if query is not None:
    page = st.session_state.get("s_page", 0)
    page_size = settings.page_size
    results = service.search(**query, limit=page_size + 1, offset=page * page_size)
    has_more = len(results) > page_size
    results = results[:page_size]
    if not results:
        st.info("无结果 (no results).")
    else:
        frame = pd.DataFrame(
            [
                {
                    "处方 prescription": r.prescription_id,
                    "版本 v": r.version,
                    "开具 issued": ui.local_time(r.issued_at) if r.issued_at else (r.day or ""),
                    "患者 patient": r.patient_id or "",
                    "医生 prescriber": r.prescriber_id or "",
                    "机构 facility": r.facility_name or r.facility_id or "",
                    "科室 department": r.department or "",
                    "等级 severity": ui.severity_label(r.severity),
                    "状态 status": ui.status_label(r.status)
                    if r.status
                    else ui.status_label("flagged" if r.flagged else "clean"),
                    "规则库 rulebook": (r.rulebook or "")[:19],
                    "item_id": r.item_id,
                    "severity_key": r.severity,
                }
                for r in results
            ]
        )
        st.caption(f"第 {page + 1} 页 page {page + 1} · {len(results)} 条")
        event = st.dataframe(
            frame.style.apply(ui.row_style_by_severity(), axis=1),
            hide_index=True,
            width="stretch",
            column_order=[c for c in frame.columns if c not in ("severity_key", "item_id")],
            on_select="rerun",
            selection_mode="single-row",
            key="s_table",
        )
        prev_col, next_col, _ = st.columns([1, 1, 6])
        if prev_col.button("上一页 Prev", disabled=page == 0, key="s_prev"):
            st.session_state["s_page"] = page - 1
            st.rerun()
        if next_col.button("下一页 Next", disabled=not has_more, key="s_next"):
            st.session_state["s_page"] = page + 1
            st.rerun()
        selected = event.selection.rows if event is not None else []
        st.caption("选中一行查看详情 (select a row for the details)")
        item_id = frame.iloc[selected[0]]["item_id"] if selected else None
        if selected and pd.isna(item_id):
            # Not flagged: no review item, but the prescription itself, its audit and — for a corrected
            # resubmission — the returned version and what the doctor changed.
            chosen = results[selected[0]]
            st.divider()
            detail_view.show_prescription(service, chosen.prescription_id, chosen.version, names, key="s_rx_view")
        elif selected:
            show_item(int(item_id))  # type: ignore[arg-type]

linked = st.query_params.get("item")
if linked is not None and query is None:
    try:
        linked_id = int(linked)
    except ValueError:
        st.warning("记录不存在 (not found).")
    else:
        show_item(linked_id)
