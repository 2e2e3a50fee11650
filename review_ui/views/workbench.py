"""审方工作台 Workbench — the queue at a glance, claim the next prescription (or open any row), decide.

Built for a pharmacist reviewing hundreds of prescriptions a day:

* after every decision the next prescription opens *from its top* (its own container, and the page
  scrolled up), so its header, the "已打开下一张" message and any 双签 banner are what the eye
  lands on — not a new Pass button under the cursor;
* errors are shown beside the control that caused them;
* passing a 拦截 (critical) finding is never the primary button, has no preselected reason and asks
  for a reason and a comment in place; a 警示 (warning) needs its reason chosen too;
* 审方时限: a countdown per item against the facility's review time limit; the claim lease shown
  and renewed while the item is open (up to ``max_hold_minutes``); 交回 give back and 跳过 skip,
  both logged in the trail; keyboard shortcuts (Streamlit's own ``shortcut=``).

Everything that touches the queue is paged: counts and the oldest waiting time come from
indexed aggregate queries, the list shows one page; nothing loads the whole table.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import streamlit as st

from review_ui import backend, catalog, ui
from review_ui import detail as detail_module
from rx_audit import NotFoundError, QueueError, ReasonRequiredError, StateError

if TYPE_CHECKING:
    from rx_audit import ReviewDetail, ReviewItem

log = logging.getLogger("rx_audit.review_ui.workbench")

user = backend.require_user()
settings = backend.settings_or_stop()
service = backend.service(settings, user)  # every queue call scoped to this user's facilities

CURRENT = "wb_item"
SKIPPED = "wb_skipped"  # item ids this pharmacist skipped in this session: not offered again
SCROLL = "wb_scroll_top"  # a counter: set after a decision, the page scrolls to the top once
OPENED = "wb_opened"  # item id -> when it was opened here (the lease is renewed up to max_hold)
TABLE_ERROR = "wb_table_error"

# Keyboard shortcuts (Streamlit's own, shown on the buttons). Alt+letter: no browser claims them,
# and Streamlit reserves C and R. P pass, T 退回 return, N next, G give back, S skip.
KEYS = {"pass": "Alt+P", "return": "Alt+T", "next": "Alt+N", "give_back": "Alt+G", "skip": "Alt+S"}


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


# --- scrolling to the top -----------------------------------------------------------------------

# A constant script (no outside text in it) in an iframe (st.iframe): it scrolls Streamlit's main
# area of the parent page to the top. The nonce changes the iframe's content, so it runs once per
# decision; raw HTML is still never rendered in the page itself.
_SCROLL_SCRIPT = """<script>
// nonce %d
const doc = window.parent.document;
for (const selector of ['[data-testid="stMain"]', '[data-testid="stAppViewContainer"]', 'section.main']) {
  const element = doc.querySelector(selector);
  if (element) { element.scrollTop = 0; }
}
window.parent.scrollTo(0, 0);
</script>"""


def scroll_to_top_once() -> None:
    nonce = st.session_state.pop(SCROLL, None)
    if nonce is not None:
        st.iframe(_SCROLL_SCRIPT % int(nonce), height=1)


def ask_scroll_to_top() -> None:
    st.session_state[SCROLL] = int(time.time() * 1000) % 1_000_000_000


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
        st.caption("队列为空 (the queue is empty)")
        return
    if compact:  # a prescription is open: keep the queue out of the way (read-only)
        with st.expander(f"队列前 {len(items)} 张 next in line", expanded=False):
            queue_table(items, selectable=False)
    else:
        queue_table(items, selectable=True)


def queue_table(items: list[ReviewItem], selectable: bool) -> None:
    frame = pd.DataFrame(
        [
            {
                "处方 prescription": i.prescription_id,
                "版本 v": i.version,
                "等级 severity": ui.severity_label(i.severity),
                "状态 status": ui.status_label(i.status),
                "机构 facility": i.facility_name or i.facility_id or "",
                "科室 department": i.department or "",
                "类别 categories": "、".join(ui.category_zh(c) for c in i.categories),
                "等待 waiting": ui.format_age(ui.utc_age_seconds(i.queued_at)),
                "severity_key": i.severity,
            }
            for i in items
        ]
    )
    st.caption(
        f"队列前 {len(frame)} 张 (next in line) · 每 {settings.refresh_seconds:g} 秒自动刷新 (refreshes itself)"
        + (" · 点选一行即领取并打开 (select a row to claim and open it)" if selectable else "")
    )
    styled = frame.style.apply(ui.row_style_by_severity(), axis=1)
    order = [c for c in frame.columns if c != "severity_key"]
    if not selectable:
        st.dataframe(styled, hide_index=True, width="stretch", column_order=order)
        return
    # A new key after each opening: the old selection must not open the row again on the next refresh.
    generation = st.session_state.get("wb_table_gen", 0)
    event = st.dataframe(
        styled,
        hide_index=True,
        width="stretch",
        column_order=order,
        on_select="rerun",
        selection_mode="single-row",
        key=f"wb_queue_table_{generation}",
    )
    # The row the pharmacist clicked is a row of the table as it was on screen: the list may have
    # changed since (it refreshes itself), so the ids shown last time are what the index points at.
    shown = st.session_state.get("wb_table_ids") or [i.id for i in items]
    st.session_state["wb_table_ids"] = [i.id for i in items]
    rows = event.selection.rows if event is not None else []
    if rows and rows[0] < len(shown):
        open_row(shown[rows[0]])
    table_error = st.session_state.get(TABLE_ERROR)
    if table_error:  # beside the table that caused it
        st.error(table_error, icon=ui.ICONS["error"])


def open_row(item_id: int) -> None:
    """Claim the selected row's item and open it (the whole page reruns to show it); if it is gone
    (taken by someone else a moment ago), say so under the table."""
    st.session_state["wb_table_gen"] = st.session_state.get("wb_table_gen", 0) + 1
    try:
        service.claim(item_id, settings.lease_seconds)
    except (StateError, NotFoundError) as error:
        st.session_state[TABLE_ERROR] = f"无法打开 cannot open: {ui.md(error)}"
        return
    st.session_state.pop(TABLE_ERROR, None)
    log.info("claim user=%s item=%s (row)", user.id, item_id)
    st.session_state[CURRENT] = item_id
    ask_scroll_to_top()
    st.rerun(scope="app")


def claim_next(f: dict[str, Any]) -> None:
    st.session_state.pop(TABLE_ERROR, None)
    try:
        item = service.claim_next(
            lease_seconds=settings.lease_seconds,
            facilities=service.facilities_filter(f["facilities"]),
            severity=f["severity"],
            category=f["category"],
            department=f["department"],
            exclude=sorted(st.session_state.get(SKIPPED, set())),
        )
    except QueueError as error:
        st.session_state["wb_claim_error"] = f"领取失败 claim failed: {ui.md(error)}"
        return
    ask_scroll_to_top()
    if item is None:
        st.session_state[CURRENT] = None
        st.session_state["wb_flash"] = ("info", "没有待审处方 (nothing to review)")
    else:
        st.session_state[CURRENT] = item.id
        log.info("claim user=%s item=%s", user.id, item.id)


# --- 审方时限 and the lease -----------------------------------------------------------------------

# A live countdown: constant markup, numbers only from the server; counted from the browser's
# monotonic clock (performance.now), so a PC whose clock is wrong still shows the right time left.
_COUNTDOWN = """<div id="c" role="timer" aria-live="off" style="font:600 18px 'WenQuanYi Zen Hei','Noto Sans CJK SC',
'Microsoft YaHei',sans-serif;padding:4px 0"></div><script>
const remaining = %d, limit = %d;
const end = performance.now() + remaining * 1000;
const el = document.getElementById('c');
function pad(n) { return String(n).padStart(2, '0'); }
function tick() {
  const s = Math.round((end - performance.now()) / 1000), a = Math.abs(s);
  const t = pad(Math.floor(a / 60)) + ':' + pad(a %% 60);
  el.textContent = s >= 0 ? '审方时限剩余 ' + t + ' / ' + pad(Math.floor(limit / 60)) + ':' + pad(limit %% 60)
                          : '已超出审方时限 ' + t + ' (over the review time limit)';
  el.dataset.remaining = s;
  el.style.color = s < 0 ? '#b71c1c' : (s < 60 ? '#e65100' : '#1b5e20');
}
tick(); setInterval(tick, 1000);
</script>"""


def review_clock(item: ReviewItem) -> tuple[datetime, float]:
    """When this item's review time started and the facility's limit: from its submission (the
    patient has waited since then), or from the doctor's 双签 when it came back double-signed."""
    start = item.queued_at if item.double_sign_reason else item.submitted_at
    return ui_utc(start), settings.review_limit_for(item.facility_id)


def ui_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def timer_bar(item: ReviewItem) -> None:
    start, limit = review_clock(item)
    deadline = start + timedelta(seconds=limit)
    remaining = (deadline - datetime.now(UTC)).total_seconds()
    left, right = st.columns([2, 3])
    with left:
        st.iframe(_COUNTDOWN % (int(remaining), int(limit)), height=36)
    state = f"剩余 {ui.format_age(remaining)}" if remaining >= 0 else f"已超时 {ui.format_age(-remaining)} (overdue)"
    right.caption(
        f"{ui.ICONS['timer']} 审方时限 review limit {ui.format_age(limit)} · 提交 {ui.clock(start)} · "
        f"截止 {ui.clock(deadline)} · {state}"
    )
    lease_keeper(item.id)


@st.fragment(run_every=60)
def lease_keeper(item_id: int) -> None:
    """Shows the claim lease and renews it while the item is open (each minute, when less than the
    lease minus a minute is left), for at most ``max_hold_minutes`` after opening."""
    opened = st.session_state.setdefault(OPENED, {}).setdefault(item_id, time.time())
    try:
        item = service.get(item_id).item
    except NotFoundError:
        return
    if item.status != "claimed" or item.claimed_by != user.id:
        return
    expires = ui_utc(item.lease_expires_at) if item.lease_expires_at else None
    left = (expires - datetime.now(UTC)).total_seconds() if expires else 0.0
    holding = time.time() - opened < settings.max_hold_minutes * 60
    if holding and left < settings.lease_seconds - 60:
        try:
            item = service.renew_lease(item_id, settings.lease_seconds)
            expires = ui_utc(item.lease_expires_at) if item.lease_expires_at else expires
        except StateError:
            return
    note = "打开期间自动续期 renewed while open" if holding else "已停止续期 (超过最长占用时间) no longer renewed"
    st.caption(f"{ui.ICONS['lease']} 领取租约至 lease until {ui.clock(expires)} · {note}")


def give_back(item_id: int) -> None:
    try:
        service.give_back(item_id)
    except (StateError, NotFoundError) as error:
        st.session_state["wb_action_error"] = f"交回未完成 not done: {ui.md(error)}"
        return
    log.info("give_back user=%s item=%s", user.id, item_id)
    st.session_state[CURRENT] = None
    st.session_state["wb_flash"] = ("info", "已交回队列 given back to the queue")
    ask_scroll_to_top()


def skip(item_id: int, f: dict[str, Any]) -> None:
    try:
        service.skip(item_id)
    except (StateError, NotFoundError) as error:
        st.session_state["wb_action_error"] = f"跳过未完成 not done: {ui.md(error)}"
        return
    log.info("skip user=%s item=%s", user.id, item_id)
    st.session_state.setdefault(SKIPPED, set()).add(item_id)
    claim_next(f)
    if st.session_state.get(CURRENT) is not None:
        st.session_state["wb_flash"] = ("info", "已跳过，已打开下一张 (skipped; next one opened)")


def action_bar(item_id: int, f: dict[str, Any]) -> None:
    c1, c2, _ = st.columns([1, 1, 3])
    c1.button(
        "交回 Give back",
        key="wb_give_back",
        icon=ui.ICONS["give_back"],
        help="放回队列原位，由他人审核（记入审计记录） put it back in line for someone else (logged)",
        on_click=give_back,
        args=(item_id,),
        shortcut=KEYS["give_back"],
    )
    c2.button(
        "跳过 Skip",
        key="wb_skip",
        icon=ui.ICONS["skip"],
        help="放回队列并打开下一张；本次登录不再分给您（记入审计记录） back in line, open the next one (logged)",
        on_click=skip,
        args=(item_id, f),
        shortcut=KEYS["skip"],
    )
    error = st.session_state.pop("wb_action_error", None)
    if error:
        st.error(error, icon=ui.ICONS["error"])


# --- deciding -----------------------------------------------------------------------------------


@st.cache_data(ttl=300, show_spinner=False)
def reason_options(db_url: str, kind: Literal["approve", "return"]) -> dict[str, str]:
    return {r.code: f"{r.code} {r.label}" + (f" ({r.label_en})" if r.label_en else "") for r in service.reasons(kind)}


def worst(detail: ReviewDetail) -> str | None:
    """The item's level: its own severity or its worst finding's, whichever is worse."""
    return ui.worst_severity([detail.item.severity, *(f.get("severity") for f in detail_module.findings_of(detail))])


def errors_key(item_id: int) -> str:
    return f"wb_err_{item_id}"


def field_error(item_id: int, field: str) -> None:
    """The error of one control, shown right under it (not at the top of the page)."""
    message = (st.session_state.get(errors_key(item_id)) or {}).get(field)
    if message:
        st.error(message, icon=ui.ICONS["error"])


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
        ask_scroll_to_top()
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
    done = "已通过 passed" if verdict == "approve" else "已退回医生 returned"
    claim_next(f)  # after a decision the next item opens, from its top
    if st.session_state.get(CURRENT) is None:
        st.session_state["wb_flash"] = ("success", f"{done}。没有更多待审处方 (nothing more to review)")
    else:
        st.session_state["wb_flash"] = ("success", f"{done}。已打开下一张 (next one opened)")


def on_decision(item_id: int, verdict: str, level: str | None, f: dict[str, Any]) -> None:
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
    if verdict == "approve" and level == "critical" and not comment:
        errors["approve_comment"] = "拦截级问题通过须填写备注 (a critical finding needs a comment to pass)."
    if errors:  # and one line beside the button that was pressed
        form = "approve_form" if verdict == "approve" else "return_form"
        errors[form] = "未提交：请补全上方标出的项目 (not submitted: complete the fields marked above)."
    st.session_state[errors_key(item_id)] = errors
    if errors:
        return
    decide(item_id, verdict, str(reason), comment, f)


def decision_forms(item_id: int, level: str | None, f: dict[str, Any]) -> None:
    critical = level == "critical"
    st.markdown("##### 审核结论 Decision")
    st.caption(
        f"快捷键 shortcuts: 通过 {KEYS['pass']} · 退回 {KEYS['return']} · 下一张 {KEYS['next']} · "
        f"交回 {KEYS['give_back']} · 跳过 {KEYS['skip']}"
    )
    # A critical item: returning it is the primary action, so the return form comes first.
    return_col, pass_col = st.columns(2) if critical else st.columns(2)[::-1]
    with pass_col, st.form(f"approve_{item_id}", border=True):
        approve_options = reason_options(settings.db_url, "approve")
        if critical:
            st.warning(
                "拦截级问题：通过须选择原因并填写备注，责任由审方药师承担 (critical finding: a reason and a "
                "comment are required to pass)",
                icon=ui.SEVERITY_ICONS["critical"],
            )
        elif level == "warning":
            st.caption("警示级问题：通过须选择原因 (warning: choose the reason for passing)")
        st.selectbox(
            "通过原因 reason（必选 required）",
            list(approve_options),
            # Only an info-level item gets a preselected reason: passing a warning or a critical
            # finding is a choice the pharmacist makes, never a default accepted in one click.
            index=0 if level not in ("critical", "warning") and approve_options else None,
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
            "通过 Pass",
            icon=ui.ICONS["pass"],
            type="secondary" if critical else "primary",
            width="stretch",
            on_click=on_decision,
            args=(item_id, "approve", level, f),
            shortcut=KEYS["pass"],
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
            "退回 Return",
            icon=ui.ICONS["return"],
            type="primary" if critical else "secondary",
            width="stretch",
            on_click=on_decision,
            args=(item_id, "return", level, f),
            shortcut=KEYS["return"],
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
    names = catalog.drug_names(backend.auditor(settings).rulebook)
    # A fresh container per item: nothing of the previous prescription's widgets is reused.
    with st.container(key=f"wb_detail_{item_id}"):
        st.subheader(f"处方 {ui.md(item.prescription_id)}")
        mine = item.status == "claimed" and item.claimed_by == user.id
        if mine:
            timer_bar(item)
            action_bar(item_id, f)
        detail_module.show_detail(
            detail,
            names,
            service,
            reasons={**reason_options(settings.db_url, "approve"), **reason_options(settings.db_url, "return")},
        )
        if not mine:
            st.info(f"此处方不在您的审核中 (not claimed by you): {ui.status_label(item.status)}")
            st.button(
                "返回队列 Back to the queue", key="wb_back", on_click=st.session_state.__setitem__, args=(CURRENT, None)
            )
            return
        decision_forms(item_id, worst(detail), f)


# --- page ---------------------------------------------------------------------------------------

scroll_to_top_once()
st.title(f"{ui.ICONS['workbench']} 审方工作台 Workbench")
current_filters = filters()
if st.session_state.get(CURRENT) is None:
    mine_now = service.claimed_by_me()
    if mine_now:  # e.g. after a page reload: resume what this pharmacist already holds
        st.session_state[CURRENT] = mine_now[0].id

flash = st.session_state.pop("wb_flash", None)
if flash:  # at the top, where the page lands after a decision; built by this page (outside text via ui.md)
    getattr(st, flash[0])(flash[1], icon=ui.ICONS["done"] if flash[0] == "success" else None)

queue_overview(current_filters, compact=st.session_state.get(CURRENT) is not None)

if st.session_state.get(CURRENT) is None:
    st.button(
        "领取下一张 Claim next",
        type="primary",
        icon=ui.ICONS["claim"],
        key="wb_claim",
        on_click=claim_next,
        args=(current_filters,),
        shortcut=KEYS["next"],
    )
    claim_error = st.session_state.pop("wb_claim_error", None)
    if claim_error:  # beside the button that caused it
        st.error(claim_error, icon=ui.ICONS["error"])
else:
    detail_view(st.session_state[CURRENT], current_filters)
