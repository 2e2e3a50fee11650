"""统计 Statistics — held / passed-after-review / returned rates, time to decision, by day,
facility, prescriber, category and rule; per-rule override rate (rules pharmacists dismiss)."""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import altair as alt
import pandas as pd
import streamlit as st

from review_ui import backend, ui

if TYPE_CHECKING:
    from rx_audit import GroupStatistics, QueueStatistics, Rate

user = backend.require_user()
settings = backend.settings_or_stop()
service = backend.service(settings, user)  # figures only over this user's facilities

st.title(f"{ui.ICONS['statistics']} 统计 Statistics")

PRESETS = {
    "近7天 7 days": 7,
    "近30天 30 days": 30,
    "近90天 90 days": 90,
    "近一年 1 year": 365,
    "全部 all": -1,
    "自定义 custom": 0,
}
c1, c2 = st.columns([3, 2])
preset = c1.segmented_control(
    "时间 period (开具日期 issue date)", list(PRESETS), default="近30天 30 days", key="st_preset"
)
days = PRESETS.get(preset or "近30天 30 days", 30)
date_to: date | None = date.today()
date_from: date | None = date.today() - timedelta(days=max(days, 1) - 1)
if days == -1:
    date_from = date_to = None
elif days == 0:
    chosen = c2.date_input("日期 range", value=(date.today() - timedelta(days=29), date.today()), key="st_range")
    if isinstance(chosen, (tuple, list)) and len(chosen) == 2:
        date_from, date_to = chosen
st.caption(f"{date_from} — {date_to}" if date_from else "全部日期 all dates")

if service.scope is not None:
    st.caption("范围 scope: " + ui.md(", ".join(service.scope)))

# One statistics API (rx_audit.QueueStatistics): totals, rates with numerator and denominator, the
# same per day, facility, prescriber, severity, category and rule. Cached per (database, scope,
# period) inside the service.
stats: QueueStatistics = service.statistics(date_from, date_to)


def pct(value: Any) -> str:
    return f"{value * 100:.1f}%" if isinstance(value, (int, float)) else "—"


def of(rate: Rate) -> str:
    return f"{rate.numerator:,} / {rate.denominator:,}"


ttd = stats.time_to_decision_seconds
m = st.columns(6)
m[0].metric("审核处方 audited", f"{stats.prescriptions:,}")
m[1].metric(
    "拦截率 held rate",
    pct(stats.held_rate.value),
    help=f"需药师审核的处方 / 全部审核处方 (flagged / audited): {of(stats.held_rate)}",
)
m[2].metric(
    "审后通过率 passed after review",
    pct(stats.pass_after_review_rate.value),
    help=f"药师通过 / 药师已决定 (approved / decided): {of(stats.pass_after_review_rate)}",
)
m[3].metric(
    "退回率 returned rate",
    pct(stats.returned_rate.value),
    help=f"退回医生 / 药师已决定 (returned / decided): {of(stats.returned_rate)}",
)
m[4].metric(
    "决策时间中位数 median time to decision",
    ui.format_age(ttd.median),
    help=f"P90 {ui.format_age(ttd.p90)} · 最长 max {ui.format_age(ttd.max)}",
)
m[5].metric("待审 waiting", f"{stats.pending:,}")


def rates_frame(groups: list[GroupStatistics], by: str) -> pd.DataFrame:
    """One row per group: audits, held rate, decided, pass/return rates, median minutes to decision."""
    rows = [
        {
            by: group.key,
            "audits": group.prescriptions,
            "held": group.flagged,
            "held_rate": group.held_rate.value if group.held_rate else None,
            "items": group.items,
            "decided": group.decided,
            "pass_after_review_rate": group.pass_after_review_rate.value,
            "returned_rate": group.returned_rate.value,
            "median_minutes_to_decision": (
                round(group.time_to_decision_seconds.median / 60, 1)
                if group.time_to_decision_seconds.median is not None
                else None
            ),
        }
        for group in groups
    ]
    return pd.DataFrame(rows)


RATES = {"held_rate": "拦截率 held", "pass_after_review_rate": "审后通过率 passed", "returned_rate": "退回率 returned"}


def rate_chart(frame: pd.DataFrame, by: str, title: str, temporal: bool = False) -> None:
    if frame.empty:
        st.caption(f"{title}: 无数据 (no data)")
        return
    long = frame.melt(id_vars=[by], value_vars=list(RATES), var_name="rate", value_name="value").dropna()
    long["rate"] = long["rate"].map(RATES)
    tooltip = [by, "rate", alt.Tooltip("value:Q", format=".1%")]
    if temporal:
        chart = (
            alt.Chart(long)
            .mark_line(point=True)
            .encode(
                x=alt.X(f"{by}:T", title=None),
                y=alt.Y("value:Q", axis=alt.Axis(format="%"), title=None),
                color=alt.Color("rate:N", title=None),
                tooltip=tooltip,
            )
        )
    else:
        chart = (
            alt.Chart(long)
            .mark_bar()
            .encode(
                y=alt.Y(f"{by}:N", sort=None, title=None),
                x=alt.X("value:Q", axis=alt.Axis(format="%"), title=None),
                color=alt.Color("rate:N", title=None),
                yOffset="rate:N",
                tooltip=tooltip,
            )
        )
    st.altair_chart(chart.properties(title=title), width="stretch")


def rate_table(frame: pd.DataFrame) -> None:
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        column_config={
            "held_rate": st.column_config.NumberColumn("拦截率 held", format="percent"),
            "pass_after_review_rate": st.column_config.NumberColumn("审后通过率 passed", format="percent"),
            "returned_rate": st.column_config.NumberColumn("退回率 returned", format="percent"),
            "median_minutes_to_decision": st.column_config.NumberColumn("决策时间中位数(分) median min"),
            "audits": "审核 audits",
            "held": "拦截 held",
            "items": "待药师审核 items",
            "decided": "已决定 decided",
        },
    )


tab_day, tab_facility, tab_prescriber, tab_category, tab_rule = st.tabs(
    ["按日 by day", "按机构 by facility", "按医生 by prescriber", "按类别 by category", "按规则 by rule"]
)

with tab_day:
    frame = rates_frame([g for g in stats.by_day if g.key != "(none)"], "day")
    rate_chart(frame, "day", "每日比率 daily rates", temporal=True)
    if not frame.empty and frame["median_minutes_to_decision"].notna().any():
        st.bar_chart(
            frame.set_index("day")["median_minutes_to_decision"],
            x_label="日期 day",
            y_label="决策时间中位数 (分钟) median minutes",
        )
    rate_table(frame)

with tab_facility:
    frame = rates_frame(stats.by_facility, "facility")
    rate_chart(frame.head(30), "facility", "按机构 by facility")
    rate_table(frame)

with tab_prescriber:
    frame = rates_frame(stats.by_prescriber, "prescriber")
    st.caption("按审核量排序，前200名 (top 200 by volume)")
    rate_chart(frame.head(30), "prescriber", "按医生 by prescriber (前30 top 30)")
    rate_table(frame)

with tab_category:
    if stats.by_category:
        frame = pd.DataFrame(
            [
                {
                    "类别 category": ui.category_label(g.key),
                    "处方数 items": g.items,
                    "审后通过率 passed": g.pass_after_review_rate.value,
                    "退回率 returned": g.returned_rate.value,
                }
                for g in stats.by_category
            ]
        )
        st.altair_chart(
            alt.Chart(frame)
            .mark_bar()
            .encode(
                y=alt.Y("类别 category:N", sort="-x", title=None),
                x=alt.X("处方数 items:Q"),
                tooltip=list(frame.columns),
            )
            .properties(title="各类问题的处方数 items by category"),
            width="stretch",
        )
        st.dataframe(
            frame,
            hide_index=True,
            width="stretch",
            column_config={
                "审后通过率 passed": st.column_config.NumberColumn(format="percent"),
                "退回率 returned": st.column_config.NumberColumn(format="percent"),
            },
        )
    else:
        st.caption("无数据 (no data)")
    if stats.by_severity:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "等级 severity": ui.severity_label(g.key if g.key != "(none)" else None),
                        "审核 audits": g.prescriptions,
                        "数量 items": g.items,
                        "拦截率 held": g.held_rate.value if g.held_rate else None,
                    }
                    for g in stats.by_severity
                ]
            ),
            hide_index=True,
            column_config={"拦截率 held": st.column_config.NumberColumn(format="percent")},
        )

with tab_rule:
    st.markdown(
        "**规则放行率 per-rule override rate** — 药师审核后仍通过的比例；放行率高的规则是需要修订的候选。"
        " (Rules pharmacists dismiss most are candidates to fix.)"
    )
    overrides = pd.DataFrame(
        [
            {**row.model_dump(exclude={"override_rate"}), "override_rate": row.override_rate.value}
            for row in stats.rule_override
        ]
    )
    if overrides.empty:
        st.caption("无数据 (no data)")
    else:
        min_decided = st.slider(
            "最少决定数 min. decisions",
            1,
            50,
            5,
            key="st_min_decided",
            help="决定次数太少的规则放行率不可靠 (few decisions: unreliable rate)",
        )
        reliable = overrides[overrides["decided"] >= min_decided].sort_values("override_rate", ascending=False)
        if not reliable.empty:
            st.altair_chart(
                alt.Chart(reliable.head(25))
                .mark_bar()
                .encode(
                    y=alt.Y("rule:N", sort="-x", title=None),
                    x=alt.X("override_rate:Q", axis=alt.Axis(format="%"), title="放行率 override rate"),
                    color=alt.Color("override_rate:Q", scale=alt.Scale(scheme="orangered"), legend=None),
                    tooltip=[
                        "rule",
                        "fired",
                        "decided",
                        "approved",
                        "returned",
                        alt.Tooltip("override_rate:Q", format=".1%"),
                    ],
                )
                .properties(title="放行率最高的规则 most-dismissed rules"),
                width="stretch",
            )
        st.dataframe(
            overrides.sort_values("fired", ascending=False),
            hide_index=True,
            width="stretch",
            column_config={
                "rule": "规则 rule",
                "fired": "触发 fired",
                "decided": "已决定 decided",
                "approved": "通过 approved",
                "returned": "退回 returned",
                "override_rate": st.column_config.NumberColumn("放行率 override", format="percent"),
            },
        )
