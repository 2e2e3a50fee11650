"""The HTML replay report (rx_audit/report.py, fed by the queue's batch summary): Chinese labels for
coded keys, readable axes, no line drawn across days without data, one time zone."""

from __future__ import annotations

import re

from rx_audit.report import _ticks, bar_chart, line_chart, render_replay


def summary(**extra) -> dict:
    base = {
        "total": 10, "flagged": 4, "flagged_share": 0.4, "held_rate": {"numerator": 4, "denominator": 10},
        "errors": 0, "new_versions": 0, "error_samples": [],
        "by_severity": {"critical": 1, "warning": 3}, "by_category": {"dose": 2, "interaction": 2},
        "by_rule": {"metformin.contra.egfr_lt_30": 1}, "by_facility": {"LZH": 4}, "by_prescriber": {"D1": 4},
        "by_day": {"2025-03-01": 1, "2025-03-02": 2, "2025-03-05": 1},
    }  # fmt: skip
    return {"file": "batch.jsonl", "rulebook": "sha256:x", "summary": {**base, **extra}}


def test_coded_keys_are_shown_with_their_chinese_words() -> None:
    page = render_replay(summary())
    assert "拦截 critical" in page and "警示 warning" in page
    assert "剂量 dose" in page or "用法、用量不适宜 dose" in page
    assert "相互作用 interaction" in page


def test_bar_chart_has_a_titled_value_axis_with_round_ticks() -> None:
    svg = bar_chart("按机构 by facility", {"LZH": 84, "HXZ": 3})
    assert "处方数 prescriptions" in svg
    assert [int(t) for t in re.findall(r"class=tick>([\d,]+)<", svg)] == _ticks(84) == [0, 50, 100]
    assert "（前" not in svg  # two bars: no "top N" note
    assert "（前 15 top 15）" in bar_chart("按规则 by rule", {f"r{i}": i for i in range(1, 30)})


def test_daily_line_breaks_at_days_without_data_and_axes_are_titled() -> None:
    svg = line_chart("每日标记处方", {"2025-03-01": 1, "2025-03-02": 2, "2025-03-05": 1, "2025-03-06": 3})
    assert svg.count("<polyline") == 2  # 1–2 March and 5–6 March: nothing drawn across 3–4 March
    assert svg.count("<circle") == 4
    assert "开具日期 issue day" in svg and "处方数 prescriptions" in svg
    assert "03-01" in svg and "03-05" in svg


def test_report_time_is_the_facility_time_zone() -> None:
    assert "(UTC+08:00)" in render_replay(summary()) and " UTC</p>" not in render_replay(summary())
