"""Labels, colours and formatting shared by the pages. No HTML: colours via Streamlit markdown
colour directives and pandas Styler only (raw HTML is never enabled).

The order of the severities, their Chinese words, the categories' Chinese names and the queue's
statuses are rx_audit's (``Severity.rank``/``label_zh``, ``Category.label_zh``, ``STATUSES``,
``READY_STATUSES``); only icons, colours and the bilingual wording of the screen live here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from rx_audit import READY_STATUSES, STATUSES, Category, Severity

# Most severe first (the order of the filters and of the findings on screen).
SEVERITIES: tuple[str, ...] = tuple(s.value for s in sorted(Severity, key=lambda s: s.rank, reverse=True))
# Streamlit's Material Symbols (a web font Streamlit ships): no emoji, which render as empty boxes on
# a hospital PC without an emoji font. Used in Markdown and icon= only; table cells are plain text.
SEVERITY_ICONS: dict[str, str] = {
    "critical": ":material/block:",
    "warning": ":material/warning:",
    "info": ":material/info:",
}
ICONS: dict[str, str] = {
    "workbench": ":material/medication:",
    "search": ":material/search:",
    "statistics": ":material/monitoring:",
    "rulebook": ":material/menu_book:",
    "admin": ":material/settings:",
    "signin": ":material/login:",
    "signout": ":material/logout:",
    "claim": ":material/inbox:",
    "pass": ":material/check_circle:",
    "return": ":material/undo:",
    "give_back": ":material/assignment_return:",
    "skip": ":material/skip_next:",
    "timer": ":material/timer:",
    "lease": ":material/lock_clock:",
    "history": ":material/history:",
    "diff": ":material/difference:",
    "double_sign": ":material/draw:",
    "error": ":material/error:",
    "done": ":material/task_alt:",
    "check": ":material/fact_check:",
    "key": ":material/key:",
    "download": ":material/download:",
    "open": ":material/open_in_new:",
}
SEVERITY_MD_COLOR: dict[str, str] = {"critical": "red", "warning": "orange", "info": "blue"}
SEVERITY_BG: dict[str, str] = {"critical": "#fde2e1", "warning": "#fff1d6", "info": "#e3f0ff"}

CATEGORIES: tuple[str, ...] = tuple(c.value for c in Category)
# The queue's statuses in Chinese and English, and the two verdicts search offers besides them.
STATUS_LABELS: dict[str, str] = {
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
VERDICTS: tuple[str, ...] = ("flagged", "clean", *STATUSES)
READY: tuple[str, ...] = tuple(READY_STATUSES)
# Statuses an item reaches after it left the line of ready ones (claimed, decided, timed out).
NOT_READY: tuple[str, ...] = tuple(s for s in STATUSES if s not in READY_STATUSES)
ACTION_LABELS: dict[str, str] = {
    "approve": "通过 approved",
    "return": "退回 returned",
    "double_sign": "医生双签 double-signed",
    "timeout_pass": "超时通过 timeout pass",
}
SEX_LABELS: dict[str, str] = {"M": "男 M", "F": "女 F", "U": "未知 U"}


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


def _key(value: Any) -> Any:
    return getattr(value, "value", value)


def severity_of(value: Any) -> Severity | None:
    """``value`` (a string or a Severity) as rx_audit's Severity, None when it is none of them."""
    try:
        return Severity(_key(value))
    except ValueError:
        return None


def severity_rank(value: Any) -> int:
    """rx_audit's order of the severities; 0 for none (or an unknown word)."""
    severity = severity_of(value)
    return severity.rank if severity is not None else 0


def severity_icon(value: Any) -> str:
    return SEVERITY_ICONS.get(str(_key(value)), "")


def _severity_words(key: Any) -> str:
    severity = severity_of(key)
    return f"{severity.label_zh} {severity.value}" if severity is not None else str(key)


def severity_label(value: Any) -> str:
    """``拦截 critical``: rx_audit's Chinese word, the English one (plain text: tables, options)."""
    key = _key(value)
    if key is None:
        return "—"
    return _severity_words(key)


def severity_md(value: Any) -> str:
    """Coloured markdown badge for a severity (``:red-badge[...]``)."""
    key = _key(value)
    if key is None:
        return "—"
    color = SEVERITY_MD_COLOR.get(key, "gray")
    icon = SEVERITY_ICONS.get(key, "")
    return f":{color}-badge[{icon} {md(_severity_words(key))}]"


def worst_severity(values: Any) -> str | None:
    """The most severe of ``values`` (strings or Severity), None when there is none."""
    worst = max((v for v in values if severity_of(v) is not None), key=severity_rank, default=None)
    return str(_key(worst)) if worst is not None else None


def at_least(value: Any) -> list[str]:
    """The severities ``value`` or more severe (the queue filters by exact severities)."""
    return [s for s in SEVERITIES if severity_rank(s) >= severity_rank(value)]


def category_label(value: Any) -> str:
    key = _key(value)
    if key is None:
        return "—"
    try:
        return f"{Category(key).label_zh} {key}"
    except ValueError:
        return str(key)


def category_zh(value: Any) -> str:
    """The category's Chinese name alone (the queue table), the word itself when unknown."""
    try:
        return Category(_key(value)).label_zh
    except ValueError:
        return str(value)


def status_label(value: Any) -> str:
    key = _key(value)
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


# --- one time zone everywhere: the facility's ----------------------------------------------------
#
# The queue stores UTC; CONTRACT times carry their offset (``10:15+08:00``). Both are shown in the
# facility's zone (``Settings.timezone``, default Asia/Shanghai), so the issue time in the header
# and in the search table are the same clock (they differed by 8 hours: 03:03 vs 11:03).
_ZONE: ZoneInfo = ZoneInfo("Asia/Shanghai")


def set_timezone(name: str) -> None:
    global _ZONE
    _ZONE = ZoneInfo(name)


def zone() -> ZoneInfo:
    return _ZONE


def to_local(value: Any) -> datetime | None:
    """A datetime (naive = UTC, as the queue stores) or ISO text (naive = already local, as an HIS
    writes it) in the facility's zone; None when it is neither."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed.replace(tzinfo=_ZONE) if parsed.tzinfo is None else parsed.astimezone(_ZONE)
    if isinstance(value, datetime):
        return (value.replace(tzinfo=UTC) if value.tzinfo is None else value).astimezone(_ZONE)
    return None


def today() -> date:
    """Today in the facility's zone (not the server's)."""
    return datetime.now(_ZONE).date()


def format_time(value: Any, seconds: bool = False) -> str:
    """``2025-03-26 10:15`` in the facility's zone."""
    if value is None:
        return "—"
    local = to_local(value)
    if local is not None:
        return local.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def clock(value: Any) -> str:
    """``10:15:03`` in the facility's zone (times of today: deadlines, leases)."""
    local = to_local(value)
    return local.strftime("%H:%M:%S") if local is not None else "—"


def yes_no(value: Any) -> str:
    if value is None:
        return "未填"
    return "是 yes" if value else "否 no"


def row_style_by_severity(column: str = "severity_key") -> Callable[[Any], list[str]]:
    """A pandas Styler row function colouring a row by the hidden severity column."""

    def style(row: Any) -> list[str]:
        color = SEVERITY_BG.get(str(row.get(column))) if hasattr(row, "get") else None
        css = f"background-color: {color}" if color else ""
        return [css] * len(row)

    return style


def day_range(days: int, end_day: date | None = None) -> tuple[date, date]:
    end = end_day or today()
    return end - timedelta(days=days - 1), end


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
    """A timestamp from the queue (UTC), shown in the facility's zone."""
    return format_time(value)
