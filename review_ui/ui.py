"""Labels, colours and formatting shared by the pages. No HTML: colours via Streamlit markdown
colour directives and pandas Styler only (raw HTML is never enabled)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

from rx_audit.models import CATEGORY_LABELS_ZH

SEVERITIES = ("critical", "warning", "info")
SEVERITY_LABELS: dict[Any, Any] = {"critical": "拦截 critical", "warning": "警示 warning", "info": "提示 info"}
SEVERITY_ICONS: dict[Any, Any] = {"critical": "🔴", "warning": "🟠", "info": "🔵"}
SEVERITY_MD_COLOR: dict[Any, Any] = {"critical": "red", "warning": "orange", "info": "blue"}
SEVERITY_BG: dict[Any, Any] = {"critical": "#fde2e1", "warning": "#fff1d6", "info": "#e3f0ff"}
SEVERITY_RANK: dict[Any, Any] = {"info": 1, "warning": 2, "critical": 3}

CATEGORIES = tuple(CATEGORY_LABELS_ZH)
STATUS_LABELS: dict[Any, Any] = {
    "pending": "待审 pending",
    "claimed": "审核中 claimed",
    "approved": "已通过 approved",
    "returned": "已退回 returned",
    "double_signed": "医生双签待复核 double-signed",
    "escalated": "超时升级 escalated",
    "auto_passed": "超时自动通过 auto-passed",
    "flagged": "需审核 flagged",
    "clean": "未拦截 clean",
}
READY_STATUSES = ("pending", "double_signed", "escalated")
ACTION_LABELS: dict[Any, Any] = {
    "approve": "通过 approved",
    "return": "退回 returned",
    "double_sign": "医生双签 double-signed",
    "timeout_pass": "超时通过 timeout pass",
}
SEX_LABELS: dict[Any, Any] = {"M": "男 M", "F": "女 F", "U": "未知 U"}


# --- text from outside (HIS payloads, findings that quote them, comments) ----------------------
#
# Every Streamlit call that takes a "body" or "label" (st.markdown, st.caption, st.error/warning/
# info/success, st.subheader, st.metric's label *and value*, expander and widget labels, toasts)
# renders Markdown: ``![x](http://evil/p.png)`` in a department name made the browser fetch an
# outside image, ``[点此](http://evil)`` became a working link. So text that came from an HIS or
# another user goes into those calls only through :func:`md`; elsewhere it goes to st.text /
# st.code / dataframe cells, which never render Markdown.

# Characters that start Markdown/GFM/Streamlit constructs anywhere in a line: escaped always.
_MD_ALWAYS = re.compile(r"([\\`*\[\]<>!|~$&{}#^])")
# ``_`` between two ASCII letters/digits can neither open nor close emphasis (GFM), so
# ``egfr_lt_30`` stays readable and searchable; any other ``_`` is escaped.
_MD_UNDERSCORE = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
# Streamlit directives (``:red[…]``, ``:material/x:``) start with ``:`` + a letter.
_MD_DIRECTIVE = re.compile(r":(?=[A-Za-z])")
# At the start of a line: list items (``-``, ``+``, ``1.``, ``1)``), setext/thematic lines (``=``).
_MD_LINE_START = re.compile(r"^(\s*\d{1,9})([.)])(?=\s|$)|^(\s*)([-+=])")
# GFM turns bare URLs, ``www.`` hosts and e-mail addresses into links *after* backslash escapes
# are resolved (a text-node transform), so escaping alone would leave ``http://evil`` clickable.
# A zero-width space inside the trigger breaks the pattern and stays invisible on screen.
_ZWSP = "\u200b"
_AUTOLINK_TRIGGERS = re.compile(r"(?i)(?<=[a-z])(?=://)|(?<=www)(?=\.)|(?<=@)")
_WHITESPACE_RUN = re.compile(r"\s*[\r\n]\s*")


def md(value: Any) -> str:
    """Outside text made inert for any Markdown-rendering Streamlit call: the characters that open
    links, images, HTML, code spans, emphasis, tables, colour directives or LaTeX backslash-escaped,
    URL / e-mail autolink triggers broken, line breaks folded (no block structure; callers may put
    the result at the start of a line). Shows as the original text. ``None`` → ``—``."""
    if value is None:
        return "—"
    text = _WHITESPACE_RUN.sub(" ", str(value)).strip()
    text = _AUTOLINK_TRIGGERS.sub(_ZWSP, text)
    text = _MD_ALWAYS.sub(r"\\\1", text)
    text = _MD_UNDERSCORE.sub(r"\\_", text)
    text = _MD_DIRECTIVE.sub(r"\\:", text)
    return _MD_LINE_START.sub(lambda m: f"{m[1]}\\{m[2]}" if m[1] is not None else f"{m[3]}\\{m[4]}", text, count=1)


def severity_label(value: Any) -> str:
    key = getattr(value, "value", value)
    if key is None:
        return "—"
    return f"{SEVERITY_ICONS.get(key, '')} {SEVERITY_LABELS.get(key, key)}".strip()


def severity_md(value: Any) -> str:
    """Coloured markdown badge for a severity (``:red-badge[...]``)."""
    key = getattr(value, "value", value)
    if key is None:
        return "—"
    color = SEVERITY_MD_COLOR.get(key, "gray")
    return f":{color}-badge[{md(SEVERITY_LABELS.get(key, key))}]"


def category_label(value: Any) -> str:
    key = getattr(value, "value", value)
    if key is None:
        return "—"
    zh = CATEGORY_LABELS_ZH.get(key)
    return f"{zh} {key}" if zh else str(key)


def status_label(value: Any) -> str:
    key = getattr(value, "value", value)
    return STATUS_LABELS.get(key, str(key)) if key is not None else "—"


def format_age(seconds: float | None) -> str:
    """``3分12秒``, ``2小时5分``, ``3天4小时`` — how long an item has waited."""
    if seconds is None:
        return "—"
    seconds = max(int(seconds), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}天{hours}小时"
    if hours:
        return f"{hours}小时{minutes}分"
    if minutes:
        return f"{minutes}分{secs}秒"
    return f"{secs}秒"


def format_time(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def yes_no(value: Any) -> str:
    if value is None:
        return "未填"
    return "是 yes" if value else "否 no"


def row_style_by_severity(column: str = "severity_key"):
    """A pandas Styler row function colouring a row by the hidden severity column."""

    def style(row: Any) -> list[str]:
        color = SEVERITY_BG.get(row.get(column)) if hasattr(row, "get") else None
        css = f"background-color: {color}" if color else ""
        return [css] * len(row)

    return style


def day_range(days: int, today: date | None = None) -> tuple[date, date]:
    end = today or date.today()
    return end - timedelta(days=days - 1), end


def g(obj: Any, name: str, default: Any = None) -> Any:
    """Read ``name`` from a dict or an object (queue records may be either)."""
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def utc_age_seconds(value: Any, now: datetime | None = None) -> float | None:
    """Seconds since a naive-UTC timestamp stored by the queue."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    current = now or datetime.now(UTC).replace(tzinfo=None)
    return max((current - value).total_seconds(), 0.0)


def local_time(value: Any) -> str:
    """A naive-UTC timestamp from the queue, shown in the server's local time."""
    if value is None:
        return "—"
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC).astimezone()
    return format_time(value)
