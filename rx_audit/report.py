"""HTML reports for replay and what-if comparison: one self-contained page, inline SVG charts.

No JavaScript, no CDN, no external fonts: the page opens on a hospital intranet without network.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

_STYLE = """
body{font-family:"Noto Sans CJK SC","WenQuanYi Zen Hei","Microsoft YaHei",system-ui,sans-serif;
margin:2rem;color:#1f2933}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d9e2ec}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #d9e2ec;padding:.25rem .6rem;text-align:left}
th{background:#f0f4f8}.kpi{display:inline-block;margin:0 1.5rem 1rem 0}.kpi b{display:block;font-size:1.6rem}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:1rem}
svg text{font-size:12px;fill:#1f2933}.muted{color:#627d98;font-size:.85rem}
"""
_COLORS = {"critical": "#c62828", "warning": "#ef6c00", "info": "#1565c0"}


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def bar_chart(title: str, counts: dict[str, int], *, top: int = 15, width: int = 460, color: str = "#2f6fb0") -> str:
    """A horizontal bar chart as inline SVG (largest first, at most ``top`` bars)."""
    items = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    if not items:
        return f"<figure><figcaption>{_e(title)}</figcaption><p class=muted>—</p></figure>"
    label_w, bar_h, gap = 170, 18, 6
    height = len(items) * (bar_h + gap) + 10
    peak = max(v for _, v in items) or 1
    room = width - label_w - 70
    rows = []
    for index, (label, value) in enumerate(items):
        y = index * (bar_h + gap) + 5
        w = max(1, round(room * value / peak))
        fill = _COLORS.get(label, color)
        short = label if len(label) <= 26 else label[:25] + "…"
        rows.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end"><title>{_e(label)}</title>{_e(short)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" fill="{fill}" rx="2"/>'
            f'<text x="{label_w + w + 5}" y="{y + 13}">{value:,}</text>'
        )
    return (
        f'<figure><figcaption>{_e(title)}</figcaption><svg role="img" aria-label="{_e(title)}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">{"".join(rows)}</svg></figure>'
    )


def line_chart(title: str, series: dict[str, int], *, width: int = 900, height: int = 180) -> str:
    """Counts per day as an SVG polyline."""
    points = sorted(series.items())
    if len(points) < 2:
        return bar_chart(title, dict(points))
    peak = max(v for _, v in points) or 1
    step = (width - 60) / (len(points) - 1)
    coords = " ".join(
        f"{40 + i * step:.1f},{height - 25 - (height - 45) * v / peak:.1f}" for i, (_, v) in enumerate(points)
    )
    labels = "".join(
        f'<text x="{40 + i * step:.1f}" y="{height - 5}" text-anchor="middle">{_e(day[5:])}</text>'
        for i, (day, _) in enumerate(points)
        if i % max(1, len(points) // 10) == 0
    )
    return (
        f'<figure><figcaption>{_e(title)}</figcaption><svg width="{width}" height="{height}" role="img" '
        f'aria-label="{_e(title)}"><polyline fill="none" stroke="#2f6fb0" stroke-width="2" points="{coords}"/>'
        f'<text x="5" y="15">{peak:,}</text>{labels}</svg></figure>'
    )


def _page(title: str, body: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>{body}"
        f"<p class=muted>rx_audit · {stamp}</p></body></html>\n"
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
        bar_chart("按严重程度 by severity", s["by_severity"]),
        bar_chart("按审核要点 by category", s["by_category"]),
        bar_chart("按规则 by rule", s["by_rule"]),
        bar_chart("按机构 by facility", s["by_facility"]),
        bar_chart("按医生 by prescriber", s["by_prescriber"]),
        "</div>",
        line_chart("按日期 flagged by issue day", s.get("by_day", {})),
    ]
    if s["error_samples"]:
        rows = "".join(
            f"<tr><td>{_e(e['line'])}</td><td>{_e(e['id'])}</td><td>{_e(e['field'])}</td><td>{_e(e['error'])}</td></tr>"
            for e in s["error_samples"]
        )
        body.append(
            f"<h2>无法读取的记录 Unreadable records (first {len(s['error_samples'])} of {s['errors']:,})</h2>"
            f"<table><tr><th>line</th><th>id</th><th>field</th><th>error</th></tr>{rows}</table>"
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
    rows = "".join(
        f"<tr><td>{_e(c['id'])}</td><td>{_e(c['line'])}</td><td>{_e(c['old_severity'] or '—')}</td>"
        f"<td>{_e(c['new_severity'] or '—')}</td><td>{_e(', '.join(c['rules_added']))}</td>"
        f"<td>{_e(', '.join(c['rules_removed']))}</td></tr>"
        for c in result["changes"][:2000]
    )
    body.append(
        f"<h2>结论改变的处方 Prescriptions that change verdict (first {min(len(result['changes']), 2000):,})</h2>"
        "<table><tr><th>id</th><th>line</th><th>OLD</th><th>NEW</th><th>+rules</th><th>−rules</th></tr>"
        f"{rows}</table>"
    )
    return _page("规则变更影响评估 Rule change what-if", "".join(body))
