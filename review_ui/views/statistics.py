"""统计 Statistics — what a pharmacy department reports: held / passed-after-review / returned rates,
干预成功率, time to decision, per pharmacist, by day, facility, prescriber, category and rule; the
per-rule override rate; export to Excel and CSV.

The period is by issue date and opens on the latest data (not on "the last 30 days of the
calendar", which read 0 everywhere while 82 prescriptions waited). Every rate shows its numerator
and denominator (on hover for the headline figures, as a column in the tables).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import altair as alt
import pandas as pd
import streamlit as st

from review_ui import backend, export, indicators, ui

if TYPE_CHECKING:
    from rx_audit import GroupStatistics, QueueStatistics, Rate

user = backend.require_user()
settings = backend.settings_or_stop()
service = backend.service(settings, user)  # figures only over this user's facilities

st.title(f"{ui.ICONS['statistics']} 统计 Statistics")

PRESETS = {
    "最近7天 7 days": 7,
    "最近30天 30 days": 30,
    "最近90天 90 days": 90,
    "最近一年 1 year": 365,
    "全部 all": -1,
    "自定义 custom": 0,
}
DEFAULT_PRESET = "最近30天 30 days"
first_day, last_day = service.data_days()
# "Latest" is the latest issue day with data (or today when there is none): old data is never a 0.
end_day = date.fromisoformat(last_day) if last_day else ui.today()
c1, c3 = st.columns([6, 1])
preset = c1.segmented_control(
    "时间 period（开具日期，截至有数据的最近一天 issue date, up to the latest day with data）",
    list(PRESETS),
    default=DEFAULT_PRESET,
    key="st_preset",
)
days = PRESETS.get(preset or DEFAULT_PRESET, 30)
date_to: date | None = end_day
date_from: date | None = end_day - timedelta(days=max(days, 1) - 1)
if days == -1:
    date_from = date_to = None
elif days == 0:
    chosen = c1.date_input("日期 range", value=(end_day - timedelta(days=29), end_day), key="st_range")
    if isinstance(chosen, (tuple, list)) and len(chosen) == 2:
        date_from, date_to = chosen
top_n = c3.number_input("显示前N名 top N", min_value=5, max_value=200, value=20, step=5, key="st_top")
top = int(top_n)
span = f"{date_from} — {date_to}" if date_from else "全部日期 all dates"
st.caption(
    f"{span} · 有数据的开具日期 data from {first_day or '—'} to {last_day or '—'}"
    + (f" · 范围 scope: {ui.md(', '.join(service.scope))}" if service.scope is not None else "")
)

# One statistics API (rx_audit.QueueStatistics): totals, rates with numerator and denominator, the
# same per day, facility, prescriber, severity, category and rule. Cached per (database, scope,
# period) inside the service.
stats: QueueStatistics = service.statistics(date_from, date_to)


def pct(value: Any) -> str:
    return f"{value * 100:.1f}%" if isinstance(value, (int, float)) else "—"


def of(rate: Rate) -> str:
    return f"{rate.numerator:,} / {rate.denominator:,}"


ttd = stats.time_to_decision_seconds
# Two rows of four: short labels that fit at 1440 px; what each rate is made of on hover.
row1 = st.columns(4)
row1[0].metric("审核处方 audited", f"{stats.prescriptions:,}", help="期间内完成审核的处方数 audited prescriptions")
row1[1].metric(
    "拦截率 held", pct(stats.held_rate.value), help=f"需药师审核 / 全部审核 flagged / audited = {of(stats.held_rate)}"
)
row1[2].metric(
    "审后通过率 passed",
    pct(stats.pass_after_review_rate.value),
    help=f"药师通过 / 药师已决定 approved / decided = {of(stats.pass_after_review_rate)}",
)
row1[3].metric(
    "退回率 returned",
    pct(stats.returned_rate.value),
    help=f"退回医生 / 药师已决定 returned / decided = {of(stats.returned_rate)}",
)
row2 = st.columns(4)
row2[0].metric(
    "干预成功率 accepted",
    pct(stats.intervention_rate.value),
    help=f"医生接受退回并修改处方 / 退回总数 returns answered with a new version / returns = "
    f"{of(stats.intervention_rate)}；医生双签坚持 double-signed: {stats.returns_insisted:,}",
)
row2[1].metric(
    "决策时间中位数 median",
    ui.format_age(ttd.median),
    help=f"提交到药师决定 submission to decision · P90 {ui.format_age(ttd.p90)} · 最长 max {ui.format_age(ttd.max)}"
    f" · n = {ttd.count:,}",
)
row2[2].metric("待审 waiting", f"{stats.pending:,}", help="当前排队的处方（不限期间） waiting now")
row2[3].metric("双签 double-signed", f"{stats.double_signed:,}", help="医生坚持原处方并签名 doctor insisted")


RATES = {"held_rate": "拦截率 held", "pass_after_review_rate": "审后通过率 passed", "returned_rate": "退回率 returned"}


def _rate_cells(name: str, rate: Rate | None) -> dict[str, Any]:
    return {
        name: rate.value if rate is not None else None,
        f"{name}_of": of(rate) if rate is not None else "",
    }


def rates_frame(groups: list[GroupStatistics], by: str) -> pd.DataFrame:
    """One row per group: audits, held rate, decided, pass/return rates (each with n/d), median minutes."""
    rows = [
        {
            by: group.key,
            "audits": group.prescriptions,
            **_rate_cells("held_rate", group.held_rate),
            "items": group.items,
            "decided": group.decided,
            **_rate_cells("pass_after_review_rate", group.pass_after_review_rate),
            **_rate_cells("returned_rate", group.returned_rate),
            "median_minutes_to_decision": (
                round(group.time_to_decision_seconds.median / 60, 1)
                if group.time_to_decision_seconds.median is not None
                else None
            ),
        }
        for group in groups
    ]
    return pd.DataFrame(rows)


def _long(frame: pd.DataFrame, by: str) -> pd.DataFrame:
    long = frame.melt(id_vars=[by], value_vars=list(RATES), var_name="rate", value_name="value")
    ofs = frame.melt(id_vars=[by], value_vars=[f"{r}_of" for r in RATES], var_name="rate", value_name="of")
    long["of"] = ofs["of"].to_numpy()
    long["rate"] = long["rate"].map(RATES)
    return long.dropna(subset=["value"])


def day_chart(frame: pd.DataFrame) -> None:
    """Daily rates: a line only joins consecutive days; a day without data breaks it."""
    if frame.empty:
        st.caption("每日比率 daily rates: 无数据 (no data)")
        return
    days = pd.to_datetime(frame["day"], errors="coerce")
    frame = frame.assign(day=days).dropna(subset=["day"]).sort_values("day")
    # A new segment starts after every gap of more than one day.
    frame["segment"] = (frame["day"].diff().dt.days.fillna(1) > 1).cumsum()
    long = _long(frame, "day").merge(frame[["day", "segment"]], on="day")
    long["series"] = long["rate"] + " #" + long["segment"].astype(str)
    chart = (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X("day:T", title="开具日期 issue date", axis=alt.Axis(format="%m-%d", labelAngle=0)),
            y=alt.Y("value:Q", axis=alt.Axis(format="%"), title="比率 rate"),
            color=alt.Color("rate:N", title=None, legend=alt.Legend(orient="bottom")),
            detail="series:N",
            tooltip=[
                alt.Tooltip("day:T", title="日期", format="%Y-%m-%d"),
                alt.Tooltip("rate:N", title="比率"),
                alt.Tooltip("value:Q", format=".1%", title="值"),
                alt.Tooltip("of:N", title="分子/分母 n/d"),
            ],
        )
    )
    st.altair_chart(chart.properties(title="每日比率 daily rates", height=280), width="stretch")


def bar_chart(frame: pd.DataFrame, by: str, title: str) -> None:
    if frame.empty:
        st.caption(f"{title}: 无数据 (no data)")
        return
    long = _long(frame, by)
    chart = (
        alt.Chart(long)
        .mark_bar()
        .encode(
            y=alt.Y(f"{by}:N", sort=None, title=None, axis=alt.Axis(labelLimit=260)),
            x=alt.X("value:Q", axis=alt.Axis(format="%"), title="比率 rate"),
            color=alt.Color("rate:N", title=None, legend=alt.Legend(orient="bottom")),
            yOffset="rate:N",
            tooltip=[
                alt.Tooltip(f"{by}:N"),
                alt.Tooltip("rate:N", title="比率"),
                alt.Tooltip("value:Q", format=".1%", title="值"),
                alt.Tooltip("of:N", title="分子/分母 n/d"),
            ],
        )
    )
    st.altair_chart(chart.properties(title=title), width="stretch")


RATE_COLUMNS: dict[str, Any] = {
    "day": "日期 day",
    "facility": "机构 facility",
    "prescriber": "医生 prescriber",
    "audits": "审核 audits",
    "held_rate": st.column_config.NumberColumn("拦截率 held", format="percent"),
    "held_rate_of": "拦截/审核 n/d",
    "items": "待药师审核 items",
    "decided": "已决定 decided",
    "pass_after_review_rate": st.column_config.NumberColumn("审后通过率 passed", format="percent"),
    "pass_after_review_rate_of": "通过/决定 n/d",
    "returned_rate": st.column_config.NumberColumn("退回率 returned", format="percent"),
    "returned_rate_of": "退回/决定 n/d",
    "median_minutes_to_decision": st.column_config.NumberColumn("决策时间中位数(分) median min"),
}


def rate_table(frame: pd.DataFrame, key: str) -> None:
    st.dataframe(frame, hide_index=True, width="stretch", column_config=RATE_COLUMNS, key=key)


def pharmacists_frame() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "药师 pharmacist": p.pharmacist,
                "决定 decisions": p.decisions,
                "通过 approved": p.approved,
                "退回 returned": p.returned,
                "放行率 override": p.overrides.value,
                "放行/决定 n/d": of(p.overrides),
                "拦截级放行 critical passed": p.critical_passed,
                "审核用时中位数(分) median min": (
                    round(p.review_seconds.median / 60, 1) if p.review_seconds.median is not None else None
                ),
            }
            for p in stats.by_pharmacist
        ]
    )


def overrides_frame(min_decided: int) -> pd.DataFrame:
    rows = [
        {
            "规则 rule": row.rule,
            "触发 fired": row.fired,
            "已决定 decided": row.decided,
            "通过 approved": row.approved,
            "退回 returned": row.returned,
            "放行率 override": row.override_rate.value,
            "放行/决定 n/d": of(row.override_rate),
        }
        for row in stats.rule_override
        if row.decided >= min_decided  # the table obeys the filter too, not only the chart
    ]
    frame = pd.DataFrame(rows)
    return frame.sort_values(["放行率 override", "已决定 decided"], ascending=False) if not frame.empty else frame


tabs = st.tabs(
    ["按日 by day", "按药师 by pharmacist", "按机构 by facility", "按医生 by prescriber", "按类别 by category",
     "按规则 by rule", "处方指标 indicators", "导出 export"]
)  # fmt: skip
frames: dict[str, pd.DataFrame] = {}

with tabs[0]:
    frame = rates_frame([g for g in stats.by_day if g.key != "(none)"], "day")
    frames["按日 by day"] = frame
    day_chart(frame)
    rate_table(frame, "st_t_day")

with tabs[1]:
    frame = pharmacists_frame()
    frames["按药师 by pharmacist"] = frame
    if frame.empty:
        st.caption("期间内无药师决定 (no decisions in the period)")
    else:
        st.caption("放行率：药师通过的被拦截处方 / 药师的全部决定；审核用时：从领取到决定 (claim to decision)")
        st.dataframe(
            frame.head(top),
            hide_index=True,
            width="stretch",
            column_config={"放行率 override": st.column_config.NumberColumn(format="percent")},
        )

with tabs[2]:
    frame = rates_frame(stats.by_facility, "facility")
    frames["按机构 by facility"] = frame
    st.caption(f"按审核量排序，前 {top} 名 (top {top} by volume)")
    bar_chart(frame.head(top), "facility", f"按机构 by facility（前 {top} top {top}）")
    rate_table(frame.head(top), "st_t_facility")

with tabs[3]:
    frame = rates_frame(stats.by_prescriber, "prescriber")
    frames["按医生 by prescriber"] = frame
    st.caption(f"按审核量排序，前 {top} 名 (top {top} by volume; 统计最多计200名 at most 200 counted)")
    bar_chart(frame.head(top), "prescriber", f"按医生 by prescriber（前 {top} top {top}）")
    rate_table(frame.head(top), "st_t_prescriber")

with tabs[4]:
    category = pd.DataFrame(
        [
            {
                "类别 category": ui.category_label(g.key),
                "处方数 items": g.items,
                "审后通过率 passed": g.pass_after_review_rate.value,
                "通过/决定 n/d": of(g.pass_after_review_rate),
                "退回率 returned": g.returned_rate.value,
                "退回/决定 n/d": of(g.returned_rate),
            }
            for g in stats.by_category
        ]
    )
    frames["按类别 by category"] = category
    if category.empty:
        st.caption("无数据 (no data)")
    else:
        st.altair_chart(
            alt.Chart(category)
            .mark_bar()
            .encode(
                y=alt.Y("类别 category:N", sort="-x", title=None, axis=alt.Axis(labelLimit=260)),
                x=alt.X("处方数 items:Q", title="处方数 items"),
                tooltip=list(category.columns),
            )
            .properties(title="各类问题的处方数 items by category"),
            width="stretch",
        )
        st.dataframe(
            category,
            hide_index=True,
            width="stretch",
            column_config={
                "审后通过率 passed": st.column_config.NumberColumn(format="percent"),
                "退回率 returned": st.column_config.NumberColumn(format="percent"),
            },
        )

with tabs[5]:
    st.markdown(
        "**规则放行率 per-rule override rate** — 药师审核后仍通过的比例；放行率高的规则是需要修订的候选。"
        " (Rules pharmacists dismiss most are candidates to fix.)"
    )
    min_decided = st.slider(
        "最少决定数 min. decisions",
        1,
        50,
        5,
        key="st_min_decided",
        help="决定次数太少的规则放行率不可靠 (few decisions: unreliable rate)",
    )
    overrides = overrides_frame(min_decided)
    frames["按规则 by rule"] = overrides
    if overrides.empty:
        st.caption(f"没有决定数 ≥ {min_decided} 的规则 (no rule with at least {min_decided} decisions)")
    else:
        st.altair_chart(
            alt.Chart(overrides.head(top))
            .mark_bar()
            .encode(
                y=alt.Y("规则 rule:N", sort="-x", title=None, axis=alt.Axis(labelLimit=320)),
                x=alt.X("放行率 override:Q", axis=alt.Axis(format="%"), title="放行率 override rate"),
                color=alt.Color("放行率 override:Q", scale=alt.Scale(scheme="orangered"), legend=None),
                tooltip=[
                    "规则 rule",
                    "触发 fired",
                    "已决定 decided",
                    alt.Tooltip("放行率 override:Q", format=".1%"),
                    "放行/决定 n/d",
                ],
            )
            .properties(title=f"放行率最高的规则（前 {top}） most-dismissed rules (top {top})"),
            width="stretch",
        )
        st.dataframe(
            overrides.head(top),
            hide_index=True,
            width="stretch",
            column_config={"放行率 override": st.column_config.NumberColumn(format="percent")},
        )


def summary_frame() -> pd.DataFrame:
    rows = [
        ("期间 period", span, ""),
        ("审核处方 audited", stats.prescriptions, ""),
        ("拦截率 held", stats.held_rate.value, of(stats.held_rate)),
        ("审后通过率 passed after review", stats.pass_after_review_rate.value, of(stats.pass_after_review_rate)),
        ("退回率 returned", stats.returned_rate.value, of(stats.returned_rate)),
        ("干预成功率 interventions accepted", stats.intervention_rate.value, of(stats.intervention_rate)),
        ("决策时间中位数(秒) median seconds to decision", stats.time_to_decision_seconds.median, ""),
        ("待审 waiting", stats.pending, ""),
    ]
    return pd.DataFrame(rows, columns=["指标 figure", "值 value", "分子/分母 n/d"])


INDICATOR_PERCENT = ["抗菌药物% antibacterial", "注射剂% injection", "基本药物% essential", "通用名% generic name"]
INDICATOR_LIMIT = 200_000  # prescriptions read for one computation (a year of a county hub is ~1,000,000)


def indicator_frame(tallies: dict[str, indicators.Tally], by: str) -> pd.DataFrame:
    rows = [{by: key, **t.row()} for key, t in sorted(tallies.items(), key=lambda kv: -kv[1].prescriptions)]
    return pd.DataFrame(rows)


def indicator_table(frame: pd.DataFrame, key: str) -> None:
    st.dataframe(
        frame.head(top),
        hide_index=True,
        width="stretch",
        column_config={c: st.column_config.NumberColumn(format="percent") for c in INDICATOR_PERCENT},
        key=key,
    )


with tabs[6]:
    st.caption(
        "WHO/INRUD 处方指标与《医院处方点评管理规范》处方评价：每张处方平均品种数、"
        "抗菌药物及注射剂使用百分率（按处方）、基本药物与通用名占比（按品种）。按规则库药品词典判定；词典未收录的品种单列，不计入基药与通用名分子。"
        " Read from every stored prescription of the period (its newest version), so computed on request."
    )
    period_key = f"{date_from}_{date_to}"
    if st.button("计算处方指标 Compute indicators", key="st_indicators", icon=ui.ICONS["check"]):
        rows = service.prescription_payloads(date_from, date_to, limit=INDICATOR_LIMIT)
        dictionary = indicators.Dictionary(backend.auditor(settings).rulebook.drug_for)
        st.session_state["st_indicator_result"] = (period_key, len(rows), indicators.tally(rows, dictionary))
    computed = st.session_state.get("st_indicator_result")
    if computed is not None and computed[0] == period_key:
        _, read, (overall, by_facility_t, by_prescriber_t) = computed
        if read >= INDICATOR_LIMIT:
            st.warning(f"只计算了前 {INDICATOR_LIMIT:,} 张处方，请缩短期间 (only the first {read:,} counted)")
        summary = overall.row()
        m = st.columns(5)
        m[0].metric("平均品种数 drugs/rx", f"{summary['平均品种数 drugs/rx'] or 0:.2f}",
                    help=f"药品品种 / 处方 drugs / prescriptions = {overall.drugs:,} / {overall.prescriptions:,}")
        for column, (label, share, ratio) in zip(m[1:], [
            ("抗菌药物 antibacterial", "抗菌药物% antibacterial", "抗菌 n/d"),
            ("注射剂 injection", "注射剂% injection", "注射 n/d"),
            ("基本药物 essential", "基本药物% essential", "基药 n/d"),
            ("通用名 generic name", "通用名% generic name", "通用名 n/d"),
        ], strict=True):  # fmt: skip
            column.metric(label, pct(summary[share]), help=f"{ratio} = {summary[ratio]}")
        if overall.unknown:
            st.caption(f"词典未收录的品种 drugs not in the dictionary: {overall.unknown:,}")
        facility_frame = indicator_frame(by_facility_t, "机构 facility")
        prescriber_frame = indicator_frame(by_prescriber_t, "医生 prescriber")
        frames["处方指标-机构 indicators by facility"] = facility_frame
        frames["处方指标-医生 indicators by prescriber"] = prescriber_frame
        st.markdown(f"**按机构 by facility**（前 {top} top {top}）")
        indicator_table(facility_frame, "st_ind_facility")
        st.markdown(f"**按医生 by prescriber**（前 {top} top {top}）")
        indicator_table(prescriber_frame, "st_ind_prescriber")

with tabs[7]:
    sheets = {"概览 summary": summary_frame(), **frames}
    stamp = f"{date_from or 'all'}_{date_to or 'all'}"
    st.download_button(
        "导出Excel（全部表） Excel, every table",
        export.workbook(sheets),
        file_name=f"rx_audit_statistics_{stamp}.xlsx",
        mime="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        icon=ui.ICONS["download"],
        key="st_xlsx",
    )
    which = st.selectbox("CSV 表 table", list(sheets), key="st_csv_table")
    st.download_button(
        "导出CSV Export CSV",
        export.csv_bytes(sheets[which]),
        file_name=f"rx_audit_{which.split()[-1]}_{stamp}.csv",
        mime="text/csv",
        icon=ui.ICONS["download"],
        key="st_csv",
    )
