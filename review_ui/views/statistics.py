"""统计 Statistics — held / passed-after-review / returned rates, time to decision, by day,
facility, prescriber, category and rule; per-rule override rate (rules pharmacists dismiss)."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from review_ui import backend, ui

user = backend.require_user()
settings = backend.settings_or_stop()
service = backend.service(settings, user)  # figures only over this user's facilities

st.title("📊 统计 Statistics")

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

# Both cached per (database, scope, period) inside the service.
stats = service.statistics(date_from, date_to)


def pct(value: Any) -> str:
    return f"{value * 100:.1f}%" if isinstance(value, (int, float)) else "—"


ttd = stats.get("time_to_decision_seconds") or {}
m = st.columns(6)
m[0].metric("审核处方 audited", f"{stats.get('prescriptions', 0):,}")
m[1].metric("拦截率 held rate", pct(stats.get("held_rate")), help="需药师审核的处方 / 全部审核处方 (flagged / audited)")
m[2].metric(
    "审后通过率 passed after review",
    pct(stats.get("pass_after_review_rate")),
    help="药师通过 / 药师已决定 (approved / decided)",
)
m[3].metric("退回率 returned rate", pct(stats.get("returned_rate")), help="退回医生 / 药师已决定 (returned / decided)")
m[4].metric(
    "决策时间中位数 median time to decision",
    ui.format_age(ttd.get("median")),
    help=f"P90 {ui.format_age(ttd.get('p90'))} · 最长 max {ui.format_age(ttd.get('max'))}",
)
m[5].metric("待审 waiting", f"{stats.get('pending', 0):,}")

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
            "decided": "已决定 decided",
        },
    )


tab_day, tab_facility, tab_prescriber, tab_category, tab_rule = st.tabs(
    ["按日 by day", "按机构 by facility", "按医生 by prescriber", "按类别 by category", "按规则 by rule"]
)

with tab_day:
    frame = service.grouped_rates("day", date_from, date_to)
    rate_chart(frame, "day", "每日比率 daily rates", temporal=True)
    if not frame.empty and frame["median_minutes_to_decision"].notna().any():
        st.bar_chart(
            frame.set_index("day")["median_minutes_to_decision"],
            x_label="日期 day",
            y_label="决策时间中位数 (分钟) median minutes",
        )
    rate_table(frame)

with tab_facility:
    frame = service.grouped_rates("facility", date_from, date_to)
    rate_chart(frame.head(30), "facility", "按机构 by facility")
    rate_table(frame)

with tab_prescriber:
    frame = service.grouped_rates("prescriber", date_from, date_to)
    st.caption("按审核量排序，前200名 (top 200 by volume)")
    rate_chart(frame.head(30), "prescriber", "按医生 by prescriber (前30 top 30)")
    rate_table(frame)

with tab_category:
    by_category = stats.get("by_category") or {}
    if by_category:
        frame = pd.DataFrame(
            [{"类别 category": ui.category_label(k), "处方数 items": v} for k, v in by_category.items()]
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
        st.dataframe(frame, hide_index=True, width="stretch")
    else:
        st.caption("无数据 (no data)")
    by_severity = stats.get("by_severity") or {}
    if by_severity:
        st.dataframe(
            pd.DataFrame(
                [
                    {"等级 severity": ui.severity_label(k if k != "(none)" else None), "数量 items": v}
                    for k, v in by_severity.items()
                ]
            ),
            hide_index=True,
        )

with tab_rule:
    st.markdown(
        "**规则放行率 per-rule override rate** — 药师审核后仍通过的比例；放行率高的规则是需要修订的候选。"
        " (Rules pharmacists dismiss most are candidates to fix.)"
    )
    overrides = pd.DataFrame(stats.get("rule_override") or [])
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
