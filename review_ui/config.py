"""Settings of the review UI: where the database, the rulebook and the users file are.

Precedence, highest first:

1. environment: ``RX_AUDIT_DB_URL`` (or its alias ``RX_AUDIT_DB``, the CLI's ``--db`` variable; both
   set to different databases is an error — the UI and ``rx-audit queue …`` must see one queue),
   ``RX_AUDIT_RULES``, ``RX_AUDIT_USERS``, ``RX_AUDIT_REFRESH_SECONDS``, ``RX_AUDIT_CHECK_TIMEOUT``,
   ``RX_AUDIT_TRUSTED_PROXIES`` (comma-separated);
2. a TOML config file: ``RX_AUDIT_CONFIG`` if set, else ``rx_audit.toml`` in the working directory
   if it exists. Keys may be top-level or under a ``[review_ui]`` table::

       db_url = "postgresql+psycopg://rx:secret@db/rx_audit"
       rules = "/srv/rx_audit/rules"
       users = "/srv/rx_audit/users.toml"
       refresh_seconds = 10
       oidc_default_role = ""      # role for st.login users not listed in the users file ("" = refuse)
       timezone = "Asia/Shanghai"  # the facility's: every time on screen is shown in it
       review_time_limit_seconds = 180   # 审方时限 (see DEFAULT_REVIEW_TIME_LIMIT_SECONDS)
       [review_ui.review_time_limits]    # per facility id, where a facility set its own
       LZH = 300

3. defaults: ``sqlite:///rx_audit.db``, ``rules``, no users file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_DB_URL = "sqlite:///rx_audit.db"
DEFAULT_RULES = "rules"
DEFAULT_CONFIG_FILE = "rx_audit.toml"

# 审方时限, the review time limit: how long a flagged prescription may wait for the pharmacist's
# decision, from its submission (the doctor and the patient are waiting at the desk). There is no
# national figure — 医疗机构处方审核规范 (2018) requires review before dispensing but sets no time —
# so this is a facility's own setting. Default 3 minutes, reasoned from practice: an outpatient
# prescription is a few items, and pre-dispensing review systems are set so that the patient is
# not sent back and forth (typically 1–5 minutes before the doctor is told the review is late);
# 3 minutes leaves time for a 拦截 finding to be read and a reason written. A county hub reviewing
# village clinics remotely may set more, per facility (``review_time_limits``).
DEFAULT_REVIEW_TIME_LIMIT_SECONDS = 180.0
DEFAULT_TIMEZONE = "Asia/Shanghai"  # CONTRACT times carry +08:00; China has one civil time zone
# The claim lease and how long the workbench keeps renewing it while an item stays open: a screen
# left open over lunch must not hold a prescription for ever (after that the lease lapses and the
# queue gives the item to someone else, logged).
DEFAULT_LEASE_SECONDS = 600.0
DEFAULT_MAX_HOLD_MINUTES = 30.0

ENV_DB_URL = "RX_AUDIT_DB_URL"
ENV_DB_CLI = "RX_AUDIT_DB"  # what the rx-audit CLI's --db reads; accepted as a fallback
ENV_RULES = "RX_AUDIT_RULES"
ENV_USERS = "RX_AUDIT_USERS"
ENV_CONFIG = "RX_AUDIT_CONFIG"
ENV_REFRESH = "RX_AUDIT_REFRESH_SECONDS"
ENV_CHECK_TIMEOUT = "RX_AUDIT_CHECK_TIMEOUT"
ENV_TRUSTED_PROXIES = "RX_AUDIT_TRUSTED_PROXIES"
ENV_TIMEZONE = "RX_AUDIT_TIMEZONE"
ENV_REVIEW_LIMIT = "RX_AUDIT_REVIEW_TIME_LIMIT_SECONDS"


class ConfigError(Exception):
    """The config file cannot be read."""


@dataclass(frozen=True)
class Settings:
    db_url: str = DEFAULT_DB_URL
    rules: str = DEFAULT_RULES
    users: str | None = None
    refresh_seconds: float = 10.0
    page_size: int = 50
    oidc_default_role: str | None = None
    idle_minutes: float = 480.0
    check_timeout_seconds: float = 120.0  # admin 检查: time limit of the rulebook check subprocess
    # Addresses of reverse proxies whose X-Forwarded-For is believed (sign-in throttling by client).
    trusted_proxies: tuple[str, ...] = ()
    timezone: str = DEFAULT_TIMEZONE
    review_time_limit_seconds: float = DEFAULT_REVIEW_TIME_LIMIT_SECONDS
    review_time_limits: dict[str, float] = field(default_factory=dict, compare=False)  # per facility id
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    max_hold_minutes: float = DEFAULT_MAX_HOLD_MINUTES
    config_file: str | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def review_limit_for(self, facility_id: str | None) -> float:
        """The 审方时限 of a facility (its own where set, else the default), in seconds."""
        return float(self.review_time_limits.get(facility_id or "", self.review_time_limit_seconds))

    def redacted_db_url(self) -> str:
        """The database URL with any password replaced by ``***`` (for display)."""
        return redact_url(self.db_url)


def redact_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"配置文件无法读取 (cannot read config file) {path}: {error}") from error
    section = data.get("review_ui")
    merged = {key: value for key, value in data.items() if not isinstance(value, dict)}
    if isinstance(data.get("review_time_limits"), dict):
        merged["review_time_limits"] = data["review_time_limits"]
    if isinstance(section, dict):
        merged.update(section)
    return merged


def _review_clock(pick: Any) -> dict[str, Any]:
    """The time zone, 审方时限 and lease settings (``pick(key, env, default)`` as in load_settings)."""
    timezone = str(pick("timezone", ENV_TIMEZONE, DEFAULT_TIMEZONE))
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ConfigError(f"未知时区 (unknown time zone) {timezone!r}: {error}") from error
    limits = {str(k): float(v) for k, v in dict(pick("review_time_limits", None, {}) or {}).items()}
    return {
        "timezone": timezone,
        "review_time_limit_seconds": max(
            float(pick("review_time_limit_seconds", ENV_REVIEW_LIMIT, DEFAULT_REVIEW_TIME_LIMIT_SECONDS)), 10.0
        ),
        "review_time_limits": {k: max(v, 10.0) for k, v in limits.items()},
        "lease_seconds": max(float(pick("lease_seconds", None, DEFAULT_LEASE_SECONDS)), 60.0),
        "max_hold_minutes": max(float(pick("max_hold_minutes", None, DEFAULT_MAX_HOLD_MINUTES)), 1.0),
    }


def load_settings(environ: dict[str, str] | None = None, cwd: Path | None = None) -> Settings:
    """Read the settings from the environment and the config file (see module doc)."""
    env = os.environ if environ is None else environ
    if env.get(ENV_DB_URL) and env.get(ENV_DB_CLI) and env[ENV_DB_URL] != env[ENV_DB_CLI]:
        # One database setting: with two different values the CLI (RX_AUDIT_DB) would migrate or
        # replay into one queue while the pharmacists review another.
        raise ConfigError(
            f"{ENV_DB_URL} 与 {ENV_DB_CLI} 指向不同的数据库，请只设置一个 (both set, to different databases; "
            f"set one): {redact_url(env[ENV_DB_URL])} ≠ {redact_url(env[ENV_DB_CLI])}"
        )
    base = Path.cwd() if cwd is None else cwd
    config_path: Path | None = None
    if env.get(ENV_CONFIG):
        config_path = Path(env[ENV_CONFIG])
        if not config_path.is_absolute():
            config_path = base / config_path
        if not config_path.is_file():
            raise ConfigError(f"{ENV_CONFIG} 指向的文件不存在 (config file not found): {config_path}")
    elif (base / DEFAULT_CONFIG_FILE).is_file():
        config_path = base / DEFAULT_CONFIG_FILE
    file_values = _read_file(config_path) if config_path else {}

    sources: dict[str, str] = {}

    def pick(key: str, env_name: str | tuple[str, ...] | None, default: Any) -> Any:
        names = (env_name,) if isinstance(env_name, str) else (env_name or ())
        for name in names:
            if env.get(name):
                sources[key] = f"env {name}"
                return env[name]
        if key in file_values and file_values[key] not in (None, ""):
            sources[key] = str(config_path)
            return file_values[key]
        sources[key] = "default"
        return default

    try:
        refresh = float(pick("refresh_seconds", ENV_REFRESH, 10.0))
        page_size = int(pick("page_size", None, 50))
        idle = float(pick("idle_minutes", None, 480.0))
        check_timeout = float(pick("check_timeout_seconds", ENV_CHECK_TIMEOUT, 120.0))
        clock = _review_clock(pick)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"配置值无效 (invalid config value): {error}") from error
    users = pick("users", ENV_USERS, None)
    role = pick("oidc_default_role", None, None)
    proxies = pick("trusted_proxies", ENV_TRUSTED_PROXIES, ())
    if isinstance(proxies, str):
        proxies = [p.strip() for p in proxies.replace("，", ",").split(",") if p.strip()]
    return Settings(
        db_url=str(pick("db_url", (ENV_DB_URL, ENV_DB_CLI), DEFAULT_DB_URL)),
        rules=str(pick("rules", ENV_RULES, DEFAULT_RULES)),
        users=str(users) if users else None,
        refresh_seconds=max(refresh, 1.0),
        page_size=max(min(page_size, 500), 5),
        oidc_default_role=str(role) if role else None,
        idle_minutes=idle,
        check_timeout_seconds=max(check_timeout, 0.5),
        trusted_proxies=tuple(str(p) for p in proxies),
        **clock,
        config_file=str(config_path) if config_path else None,
        sources=sources,
    )
