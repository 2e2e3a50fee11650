"""HTML reports for replay and what-if comparison: one self-contained page, inline SVG charts.

No JavaScript, no CDN, no external fonts: the page opens on a hospital intranet without network.
"""

from __future__ import annotations

import html
from datetime import date, datetime, timedelta, timezone
from typing import Any

from rx_audit.contract import Category, Severity

_CHINA = timezone(timedelta(hours=8), "UTC+08:00")

_STYLE = """
body{font-family:"Noto Sans CJK SC","WenQuanYi Zen Hei","Microsoft YaHei",system-ui,sans-serif;
margin:2rem;color:#1f2933}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d9e2ec}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #d9e2ec;padding:.25rem .6rem;text-align:left}
th{background:#f0f4f8}.kpi{display:inline-block;margin:0 1.5rem 1rem 0}.kpi b{display:block;font-size:1.6rem}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:1rem}
svg text{font-size:12px;fill:#1f2933}svg text.tick{font-size:11px;fill:#486581}
svg text.axis{font-size:12px;fill:#334e68}.muted{color:#627d98;font-size:.85rem}
"""
_COLORS = {"critical": "#c62828", "warning": "#ef6c00", "info": "#1565c0"}


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def severity_labels() -> dict[str, str]:
    """``critical`` → ``拦截 critical``: the contract's Chinese words beside the codes."""
    return {s.value: f"{s.label_zh} {s.value}" for s in Severity}


def category_labels() -> dict[str, str]:
    return {c.value: f"{c.label_zh} {c.value}" for c in Category}


def _ticks(peak: int, count: int = 4) -> list[int]:
    """Round axis ticks from 0 to at least ``peak``, about ``count`` steps of 1, 2 or 5 × 10ⁿ."""
    raw = max(peak, 1) / count
    magnitude = 10 ** (len(str(int(raw))) - 1)
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    steps = -(-max(peak, 1) // step)  # ceiling
    return [i * step for i in range(steps + 1)]


def bar_chart(
    title: str,
    counts: dict[str, int],
    *,
    top: int = 15,
    width: int = 460,
    color: str = "#2f6fb0",
    labels: dict[str, str] | None = None,
    unit: str = "处方数 prescriptions",
) -> str:
    """A horizontal bar chart as inline SVG (largest first, at most ``top`` bars), with a value
    axis (ticks, grid lines, its title) and the Chinese words of coded labels (``labels``)."""
    items = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    shown = f"{title}（前 {top} top {top}）" if len(counts) > top else title
    if not items:
        return f"<figure><figcaption>{_e(title)}</figcaption><p class=muted>无数据 no data</p></figure>"
    names = labels or {}
    label_w, bar_h, gap, axis_h = 190, 18, 6, 36
    plot_h = len(items) * (bar_h + gap) + 4
    height = plot_h + axis_h
    ticks = _ticks(max(v for _, v in items))
    scale = ticks[-1] or 1
    room = width - label_w - 50
    rows = []
    for tick in ticks:
        x = label_w + room * tick / scale
        rows.append(
            f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{plot_h}" stroke="#d9e2ec"/>'
            f'<text x="{x:.1f}" y="{plot_h + 14}" text-anchor="middle" class=tick>{tick:,}</text>'
        )
    for index, (key, value) in enumerate(items):
        y = index * (bar_h + gap) + 4
        w = max(1, round(room * value / scale))
        fill = _COLORS.get(key, color)
        label = names.get(key, key)
        short = label if len(label) <= 28 else label[:27] + "…"
        rows.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end"><title>{_e(label)}</title>{_e(short)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" fill="{fill}" rx="2">'
            f"<title>{_e(label)}: {value:,}</title></rect>"
            f'<text x="{label_w + w + 5}" y="{y + 13}">{value:,}</text>'
        )
    middle = label_w + room / 2
    rows.append(f'<text x="{middle:.0f}" y="{height - 4}" text-anchor="middle" class=axis>{_e(unit)}</text>')
    return (
        f'<figure><figcaption>{_e(shown)}</figcaption><svg role="img" aria-label="{_e(title)}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">{"".join(rows)}</svg></figure>'
    )


def _runs(days: list[str]) -> list[list[int]]:
    """Indexes of consecutive calendar days: a day without data starts a new run (no line across it)."""
    runs: list[list[int]] = []
    previous: date | None = None
    for index, day in enumerate(days):
        try:
            current: date | None = date.fromisoformat(day[:10])
        except ValueError:
            current = None
        if not runs or current is None or previous is None or (current - previous).days != 1:
            runs.append([])
        runs[-1].append(index)
        previous = current
    return runs


def line_chart(title: str, series: dict[str, int], *, width: int = 900, height: int = 220) -> str:
    """Counts per day: points, lines joining consecutive days only, a value axis with ticks and grid
    lines, dates (月-日) along the bottom and both axes titled."""
    points = sorted(series.items())
    if len(points) < 2:
        return bar_chart(title, dict(points))
    left, right, top_pad, bottom = 56, 16, 12, 44
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    ticks = _ticks(max(v for _, v in points))
    scale = ticks[-1] or 1
    first = date.fromisoformat(points[0][0][:10]) if _is_day(points[0][0]) else None
    last = date.fromisoformat(points[-1][0][:10]) if _is_day(points[-1][0]) else None
    span = (last - first).days if first and last and last > first else len(points) - 1

    def x_of(index: int) -> float:
        day = points[index][0]
        offset = (date.fromisoformat(day[:10]) - first).days if first and _is_day(day) else index
        return left + plot_w * offset / max(span, 1)

    def y_of(value: int) -> float:
        return top_pad + plot_h - plot_h * value / scale

    parts = []
    for tick in ticks:
        y = y_of(tick)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#d9e2ec"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class=tick>{tick:,}</text>'
        )
    for run in _runs([day for day, _ in points]):
        coords = " ".join(f"{x_of(i):.1f},{y_of(points[i][1]):.1f}" for i in run)
        if len(run) > 1:
            parts.append(f'<polyline fill="none" stroke="#2f6fb0" stroke-width="2" points="{coords}"/>')
    for index, (day, value) in enumerate(points):
        parts.append(
            f'<circle cx="{x_of(index):.1f}" cy="{y_of(value):.1f}" r="2.5" fill="#2f6fb0">'
            f"<title>{_e(day)}: {value:,}</title></circle>"
        )
    every = max(1, len(points) // 12)
    parts.extend(
        f'<text x="{x_of(i):.1f}" y="{top_pad + plot_h + 16}" text-anchor="middle" class=tick>{_e(day[5:10])}</text>'
        for i, (day, _) in enumerate(points)
        if i % every == 0
    )
    parts.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" text-anchor="middle" class=axis>'
        "开具日期 issue day (月-日)</text>"
        f'<text x="12" y="{top_pad + plot_h / 2:.0f}" text-anchor="middle" class=axis '
        f'transform="rotate(-90 12 {top_pad + plot_h / 2:.0f})">处方数 prescriptions</text>'
    )
    return (
        f'<figure><figcaption>{_e(title)}</figcaption><svg width="{width}" height="{height}" role="img" '
        f'aria-label="{_e(title)}" viewBox="0 0 {width} {height}">{"".join(parts)}</svg></figure>'
    )


def _is_day(value: str) -> bool:
    try:
        date.fromisoformat(value[:10])
    except ValueError:
        return False
    return True


def _page(title: str, body: str) -> str:
    # One time zone for people: the facility's (China's civil time; CONTRACT times carry +08:00).
    stamp = datetime.now(_CHINA).strftime("%Y-%m-%d %H:%M (UTC+08:00)")
    return (
        f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>{body}"
        f"<p class=muted>rx_audit · 生成于 generated {stamp}</p></body></html>\n"
    )


def _kpis(pairs: list[tuple[str, Any]]) -> str:
    return "".join(f"<span class=kpi>{_e(label)}<b>{_e(value)}</b></span>" for label, value in pairs)


def render_replay(run: dict[str, Any]) -> str:
    """The replay summary (``ReplayRun.to_dict()``) as a page."""
    s = run["summary"]
    share = f"{s['flagged_share']:.1%}" if s.get("flagged_share") is not None else "—"
    held = s.get("held_rate")  # the queue's held rate: flagged / audited, with what it is made of
    if held and held.get("denominator"):
        share += f" ({held['numerator']:,}/{held['denominator']:,})"
    body = [
        f"<p class=muted>{_e(run['file'])} · rulebook {_e(run.get('rulebook'))}</p>",
        _kpis(
            [
                ("处方 prescriptions", f"{s['total']:,}"),
                ("标记 flagged", f"{s['flagged']:,}"),
                ("标记率 flagged share", share),
                ("无法读取 unreadable", f"{s['errors']:,}"),
                ("新版本 new versions", f"{s.get('new_versions', 0):,}"),
                ("本次重复 repeats (this run)", f"{run.get('repeats', 0):,}"),
                ("本次速度 rate", f"{run.get('rate', 0):,.0f}/s"),
            ]
        ),
        "<h2>分布 Distribution</h2><div class=grid>",
        bar_chart("按严重程度 by severity", s["by_severity"], labels=severity_labels()),
        bar_chart("按审核要点 by category", s["by_category"], labels=category_labels()),
        bar_chart("按规则 by rule", s["by_rule"]),
        bar_chart("按机构 by facility", s["by_facility"]),
        bar_chart("按医生 by prescriber", s["by_prescriber"]),
        "</div>",
        line_chart("每日标记处方 flagged by issue day", s.get("by_day", {})),
    ]
    if s["error_samples"]:
        rows = "".join(
            f"<tr><td>{_e(e['line'])}</td><td>{_e(e['id'])}</td><td>{_e(e['field'])}</td><td>{_e(e['error'])}</td></tr>"
            for e in s["error_samples"]
        )
        body.append(
            f"<h2>无法读取的记录 Unreadable records（前 {len(s['error_samples'])} 条，共 {s['errors']:,} 条）</h2>"
            f"<table><tr><th>行号 line</th><th>处方号 id</th><th>字段 field</th><th>错误 error</th></tr>{rows}</table>"
        )
    return _page("处方回放审核报告 Replay report", "".join(body))


def render_compare(result: dict[str, Any]) -> str:
    """The what-if comparison (``CompareResult.to_dict()``) as a page for the pharmacy committee."""
    body = [
        f"<p class=muted>{_e(result['file'])}<br>OLD {_e(result['old_rulebook'])}"
        f"<br>NEW {_e(result['new_rulebook'])}</p>",
        _kpis(
            [
                ("处方 audited", f"{result['total']:,}"),
                ("标记 flagged OLD→NEW", f"{result['old_flagged']:,} → {result['new_flagged']:,}"),
                ("结论改变 changed", f"{result['changed']:,}"),
                ("新增标记 newly flagged", f"{result['newly_flagged']:,}"),
                ("不再标记 no longer flagged", f"{result['no_longer_flagged']:,}"),
            ]
        ),
        "<div class=grid>",
        bar_chart("仅新规则触发 rules firing only with NEW", result["rules_added"], color="#c62828"),
        bar_chart("仅旧规则触发 rules firing only with OLD", result["rules_removed"], color="#2e7d32"),
        "</div>",
    ]
    sev = severity_labels()
    rows = "".join(
        f"<tr><td>{_e(c['id'])}</td><td>{_e(c['line'])}</td>"
        f"<td>{_e(sev.get(c['old_severity'], c['old_severity']) or '—')}</td>"
        f"<td>{_e(sev.get(c['new_severity'], c['new_severity']) or '—')}</td><td>{_e(', '.join(c['rules_added']))}</td>"
        f"<td>{_e(', '.join(c['rules_removed']))}</td></tr>"
        for c in result["changes"][:2000]
    )
    body.append(
        f"<h2>结论改变的处方 Prescriptions that change verdict（前 {min(len(result['changes']), 2000):,} 张）</h2>"
        "<table><tr><th>处方号 id</th><th>行号 line</th><th>旧规则 OLD</th><th>新规则 NEW</th>"
        "<th>新增触发 +rules</th><th>不再触发 −rules</th></tr>"
        f"{rows}</table>"
    )
    return _page("规则变更影响评估 Rule change what-if", "".join(body))
