"""审方工作台 Workbench — the queue at a glance, claim the next prescription, decide.

Everything that touches the queue is paged: counts and the oldest waiting time come from
indexed aggregate queries, the list shows one page; nothing loads the whole table.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import streamlit as st

from review_ui import backend, ui
from review_ui import detail as detail_module
from rx_audit import NotFoundError, QueueError, ReasonRequiredError, StateError

if TYPE_CHECKING:
    from rx_audit import ReviewDetail, ReviewItem

log = logging.getLogger("rx_audit.review_ui.workbench")

user = backend.require_user()
settings = backend.settings_or_stop()
service = backend.service(settings, user)  # every queue call scoped to this user's facilities

CURRENT = "wb_item"


# --- filters ------------------------------------------------------------------------------------


def filters() -> dict[str, Any]:
    """The pharmacist's filters, restricted to the facilities they are assigned (if any)."""
    with st.expander("筛选 Filters", expanded=False):
        c1, c2, c3, c4 = st.columns(4)
        severity = c1.selectbox(
            "最低等级 severity ≥",
            [None, "warning", "critical"],
            format_func=lambda s: "全部 all" if s is None else ui.severity_label(s),
            key="wb_f_severity",
        )
        if user.facilities:
            facilities = c2.multiselect(
                "机构 facility", list(user.facilities), key="wb_f_facility", placeholder="全部 all"
            )
        else:
            text = c2.text_input("机构 facility (id, 逗号分隔)", key="wb_f_facility_text")
            facilities = [f.strip() for f in text.replace("，", ",").split(",") if f.strip()]
        department = c3.text_input("科室 department", key="wb_f_department").strip() or None
        category = c4.selectbox(
            "类别 category",
            [None, *ui.CATEGORIES],
            format_func=lambda c: "全部 all" if c is None else ui.category_label(c),
            key="wb_f_category",
        )
    return {
        "facilities": list(facilities) or (list(user.facilities) or None),
        # "≥ warning" means warning or critical: the queue filters by exact severities.
        "severity": None if severity is None else ui.at_least(severity),
        "category": category,
        "department": department,
    }


# --- the queue, refreshed by itself -------------------------------------------------------------


def list_filters(f: dict[str, Any]) -> dict[str, Any]:
    return {
        "facility": service.facilities_filter(f["facilities"]),
        "severity": f["severity"],
        "category": f["category"],
        "department": f["department"],
    }


@st.fragment(run_every=settings.refresh_seconds)
def queue_overview(f: dict[str, Any], compact: bool) -> None:
    """Counts, oldest waiting time and the next page of the queue; reruns by itself."""
    filters_now = list_filters(f)
    pending = service.count(status=list(ui.READY), **filters_now)
    oldest = service.oldest_pending_age_seconds()
    mine = service.claimed_by_me()
    c1, c2, c3 = st.columns(3)
    c1.metric("待审 pending", f"{pending:,}")
    c2.metric("最久等待 oldest waiting", ui.format_age(oldest))
    c3.metric("我审核中 claimed by me", f"{len(mine):,}")
    items = service.list_items(status=list(ui.READY), limit=min(settings.page_size, 15), **filters_now)
    if not items:
        st.caption("队列为空 (the queue is empty) ✓")
        return
    if compact:  # a prescription is open: keep the queue out of the way
        with st.expander(f"队列前 {len(items)} 张 next in line", expanded=False):
            queue_table(items)
    else:
        queue_table(items)


def queue_table(items: list[ReviewItem]) -> None:
    frame = pd.DataFrame(
        [
            {
                "处方 prescription": i.prescription_id,
                "版本 v": i.version,
                "等级 severity": ui.severity_label(i.severity),
                "状态 status": ui.status_label(i.status),
                "机构 facility": i.facility_name or i.facility_id,
                "科室 department": i.department,
                "类别 categories": "、".join(ui.category_zh(c) for c in i.categories),
                "等待 waiting": ui.format_age(ui.utc_age_seconds(i.queued_at)),
                "severity_key": i.severity,
            }
            for i in items
        ]
    )
    st.caption(f"队列前 {len(frame)} 张 (next in line) · 每 {settings.refresh_seconds:g} 秒自动刷新 (refreshes itself)")
    st.dataframe(
        frame.style.apply(ui.row_style_by_severity(), axis=1),
        hide_index=True,
        width="stretch",
        column_order=[c for c in frame.columns if c != "severity_key"],
    )


def claim_next(f: dict[str, Any]) -> None:
    try:
        item = service.claim_next(
            facilities=service.facilities_filter(f["facilities"]),
            severity=f["severity"],
            category=f["category"],
            department=f["department"],
        )
    except QueueError as error:
        st.session_state["wb_flash"] = ("error", f"领取失败 claim failed: {ui.md(error)}")
        return
    if item is None:
        st.session_state[CURRENT] = None
        st.session_state["wb_flash"] = ("info", "没有待审处方 (nothing to review) ✓")
    else:
        st.session_state[CURRENT] = item.id
        log.info("claim user=%s item=%s", user.id, item.id)


# --- deciding -----------------------------------------------------------------------------------


@st.cache_data(ttl=300, show_spinner=False)
def reason_options(db_url: str, kind: Literal["approve", "return"]) -> dict[str, str]:
    return {r.code: f"{r.code} {r.label}" + (f" ({r.label_en})" if r.label_en else "") for r in service.reasons(kind)}


def is_critical(detail: ReviewDetail) -> bool:
    """The item (or any of its findings) is at the 拦截 critical level."""
    severities = [detail.item.severity, *(f.get("severity") for f in detail_module.findings_of(detail))]
    return ui.worst_severity(severities) == "critical"


def errors_key(item_id: int) -> str:
    return f"wb_err_{item_id}"


def field_error(item_id: int, field: str) -> None:
    """The error of one control, shown right under it (not at the top of the page)."""
    message = (st.session_state.get(errors_key(item_id)) or {}).get(field)
    if message:
        st.error(message, icon="⚠️")


def decide(item_id: int, verdict: str, reason: str, comment: str, f: dict[str, Any]) -> None:
    form = "approve_form" if verdict == "approve" else "return_form"
    try:
        if verdict == "approve":
            service.approve(item_id, reason, comment)
        else:
            service.return_to_doctor(item_id, reason, comment)
    except (StateError, NotFoundError) as error:
        # The item is gone from this pharmacist (taken, decided, out of scope): nothing to show in place.
        st.session_state["wb_flash"] = ("error", f"操作未完成 not done: {ui.md(error)}")
        st.session_state[CURRENT] = None
        return
    except ReasonRequiredError as error:
        st.session_state[errors_key(item_id)] = {
            form: f"队列拒绝：拦截级问题通过需填写原因和备注 (the queue refused: a critical finding needs a reason "
            f"and a comment): {ui.md(error)}"
        }
        return
    except QueueError as error:
        st.session_state[errors_key(item_id)] = {form: f"操作未完成 not done: {ui.md(error)}"}
        return
    st.session_state.pop(errors_key(item_id), None)
    log.info("decision user=%s item=%s verdict=%s reason=%s", user.id, item_id, verdict, reason)
    done = "已通过 passed ✓" if verdict == "approve" else "已退回医生 returned ✓"
    claim_next(f)  # after a decision the next item opens
    if st.session_state.get(CURRENT) is None:
        st.session_state["wb_flash"] = ("success", f"{done} 没有更多待审处方 (nothing more to review)")
    else:
        st.session_state["wb_flash"] = ("success", f"{done} 已打开下一张 (next one opened)")


def on_decision(item_id: int, verdict: str, critical: bool, f: dict[str, Any]) -> None:
    """Form callback: runs before the script, so the next item (or the errors) show in the same run."""
    if verdict == "approve":
        reason = st.session_state.get(f"wb_ar_{item_id}")
        comment = (st.session_state.get(f"wb_ac_{item_id}") or "").strip()
    else:
        reason = st.session_state.get(f"wb_rr_{item_id}")
        comment = (st.session_state.get(f"wb_rc_{item_id}") or "").strip()
    errors: dict[str, str] = {}
    if not reason:
        errors["approve_reason" if verdict == "approve" else "return_reason"] = (
            "请选择通过原因 (choose a reason for passing)."
            if verdict == "approve"
            else "请选择退回原因 (choose a reason for the return)."
        )
    if verdict == "approve" and critical and not comment:
        errors["approve_comment"] = "拦截级问题通过须填写备注 (a critical finding needs a comment to pass)."
    st.session_state[errors_key(item_id)] = errors
    if errors:
        return
    decide(item_id, verdict, str(reason), comment, f)


def decision_forms(item_id: int, critical: bool, f: dict[str, Any]) -> None:
    st.markdown("##### 审核结论 Decision")
    pass_col, return_col = st.columns(2)
    with pass_col, st.form(f"approve_{item_id}", border=True):
        approve_options = reason_options(settings.db_url, "approve")
        if critical:
            st.warning("拦截级问题：通过须选原因并填写备注 (critical finding: a reason and a comment are required)")
        st.selectbox(
            "通过原因 reason（必选 required）",
            list(approve_options),
            # A critical finding is never passed on a preselected default: the pharmacist chooses.
            index=None if critical else 0,
            format_func=approve_options.__getitem__,
            placeholder="请选择 choose…",
            key=f"wb_ar_{item_id}",
        )
        field_error(item_id, "approve_reason")
        st.text_area(
            "备注 comment（必填 required）" if critical else "备注 comment",
            key=f"wb_ac_{item_id}",
            height=80,
            max_chars=500,
        )
        field_error(item_id, "approve_comment")
        st.form_submit_button(
            "✅ 通过 Pass",
            type="primary",
            width="stretch",
            on_click=on_decision,
            args=(item_id, "approve", critical, f),
        )
        field_error(item_id, "approve_form")
    with return_col, st.form(f"return_{item_id}", border=True):
        return_options = reason_options(settings.db_url, "return")
        st.selectbox(
            "退回原因 reason（必选 required）",
            list(return_options),
            index=None,
            format_func=return_options.__getitem__,
            placeholder="请选择 choose…",
            key=f"wb_rr_{item_id}",
        )
        field_error(item_id, "return_reason")
        st.text_area("给医生的说明 note to the doctor", key=f"wb_rc_{item_id}", height=80, max_chars=500)
        st.form_submit_button(
            "↩️ 退回 Return", width="stretch", on_click=on_decision, args=(item_id, "return", critical, f)
        )
        field_error(item_id, "return_form")


def detail_view(item_id: int, f: dict[str, Any]) -> None:
    try:
        detail = service.get(item_id)
    except NotFoundError:
        st.session_state[CURRENT] = None
        st.warning("该处方已不在队列中 (item no longer in the queue).")
        return
    item = detail.item
    st.subheader(f"处方 {ui.md(item.prescription_id)}")
    detail_module.show_detail(detail)
    if item.status != "claimed" or item.claimed_by != user.id:
        st.info(f"此处方不在您的审核中 (not claimed by you): {ui.status_label(item.status)}")
        st.button(
            "返回队列 Back to the queue", key="wb_back", on_click=st.session_state.__setitem__, args=(CURRENT, None)
        )
        return
    decision_forms(item_id, is_critical(detail), f)


# --- page ---------------------------------------------------------------------------------------

st.title("🩺 审方工作台 Workbench")
current_filters = filters()
if st.session_state.get(CURRENT) is None:
    mine = service.claimed_by_me()
    if mine:  # e.g. after a page reload: resume what this pharmacist already holds
        st.session_state[CURRENT] = mine[0].id
queue_overview(current_filters, compact=st.session_state.get(CURRENT) is not None)

flash = st.session_state.pop("wb_flash", None)
if flash:  # messages are built by this page; any outside text in them went through ui.md
    getattr(st, flash[0])(flash[1])

if st.session_state.get(CURRENT) is None:
    st.button(
        "领取下一张 Claim next",
        type="primary",
        icon="📥",
        key="wb_claim",
        on_click=claim_next,
        args=(current_filters,),
    )
else:
    detail_view(st.session_state[CURRENT], current_filters)
