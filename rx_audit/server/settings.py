"""What the service runs with: the rulebook, the queue database, the keys file and the limits.

Read from the environment (what ``rx-audit serve`` sets for its uvicorn workers), optionally from a
TOML file (``RX_AUDIT_SERVER_CONFIG`` or ``--config``) whose keys are the field names below; the
environment wins over the file, explicit arguments over both.

==========================  ===============================  ======================
field                       environment                      default
==========================  ===============================  ======================
rules                       RX_AUDIT_RULES                   ``rules``
db_url                      RX_AUDIT_DB_URL                  ``sqlite:///rx_audit.db``
keys_file                   RX_AUDIT_KEYS                    ``keys.toml``
max_body_bytes              RX_AUDIT_MAX_BODY_BYTES          1,000,000
rate_per_minute             RX_AUDIT_RATE_PER_MINUTE         600 (per key and worker)
rate_burst                  RX_AUDIT_RATE_BURST              = rate_per_minute
max_wait_seconds            RX_AUDIT_MAX_WAIT_SECONDS        25 (``?wait=`` is capped here)
audit_threads               RX_AUDIT_AUDIT_THREADS           2 (audits being stored at once, per worker)
cds_audience                RX_AUDIT_CDS_AUDIENCE            none (comma-separated)
cds_issuers                 RX_AUDIT_CDS_ISSUERS (JSON)      none
webhook_allow               RX_AUDIT_WEBHOOK_ALLOW           none: any http(s) host
==========================  ===============================  ======================

CDS Hooks' JWT (``cds_issuers``, ``cds_audience``): an EHR may authenticate to ``/cds-services`` with
the JWT of CDS Hooks 2.0 instead of an API key. Each issuer names its JWKS URL and the facilities its
requests are for; ``cds_audience`` is our service URL(s) as the EHR calls them (the token's ``aud``)::

    cds_audience = ["https://rx-audit.example.cn/cds-services/rx-audit-order-sign"]

    [[cds_issuers]]
    iss = "https://ehr.example.cn"
    jwks_url = "https://ehr.example.cn/.well-known/jwks.json"
    facilities = ["LZH"]

``webhook_allow``: the hosts a webhook URL may name (``his.lzh.local``, ``*.county.cn``, ``10.2.3.4``);
empty, any http(s) host. A registration outside it is refused (422, ``url``).
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

CONFIG_ENV = "RX_AUDIT_SERVER_CONFIG"
ENV_VARS = {
    "rules": "RX_AUDIT_RULES",
    "db_url": "RX_AUDIT_DB_URL",
    "keys_file": "RX_AUDIT_KEYS",
    "max_body_bytes": "RX_AUDIT_MAX_BODY_BYTES",
    "rate_per_minute": "RX_AUDIT_RATE_PER_MINUTE",
    "rate_burst": "RX_AUDIT_RATE_BURST",
    "max_wait_seconds": "RX_AUDIT_MAX_WAIT_SECONDS",
    "audit_threads": "RX_AUDIT_AUDIT_THREADS",
    "cds_audience": "RX_AUDIT_CDS_AUDIENCE",
    "cds_issuers": "RX_AUDIT_CDS_ISSUERS",
    "webhook_allow": "RX_AUDIT_WEBHOOK_ALLOW",
}


class SettingsError(ValueError):
    """A setting that cannot be used (one line naming it)."""


@dataclass(frozen=True)
class CdsIssuer:
    """An EHR whose CDS Hooks JWTs are accepted: its ``iss``, its JWKS URL, the facilities it serves."""

    iss: str
    jwks_url: str
    facilities: frozenset[str]

    def as_dict(self) -> dict[str, Any]:
        return {"iss": self.iss, "jwks_url": self.jwks_url, "facilities": sorted(self.facilities)}


@dataclass(frozen=True)
class Settings:
    rules: Path = Path("rules")
    db_url: str = "sqlite:///rx_audit.db"
    keys_file: Path = Path("keys.toml")
    max_body_bytes: int = 1_000_000
    rate_per_minute: float = 600.0
    rate_burst: int | None = None
    max_wait_seconds: float = 25.0  # below the graceful-shutdown time: a stop loses no long poll
    audit_threads: int = 2
    cds_audience: tuple[str, ...] = ()
    cds_issuers: tuple[CdsIssuer, ...] = ()
    webhook_allow: tuple[str, ...] = ()

    @property
    def burst(self) -> int:
        return self.rate_burst if self.rate_burst is not None else max(int(self.rate_per_minute), 1)

    @classmethod
    def load(cls, config: str | Path | None = None, **overrides: Any) -> Settings:
        """Defaults ← the TOML file ← the environment ← ``overrides`` (None values are ignored)."""
        values: dict[str, Any] = {}
        path = config or os.environ.get(CONFIG_ENV)
        if path:
            try:
                values.update(tomllib.loads(Path(path).read_text(encoding="utf-8")))
            except (OSError, tomllib.TOMLDecodeError) as error:
                raise SettingsError(f"cannot read the server config {path}: {error}") from None
        for name, variable in ENV_VARS.items():
            if os.environ.get(variable):
                values[name] = os.environ[variable]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls().with_values(values)

    def with_values(self, values: dict[str, Any]) -> Settings:
        known = {f.name: f for f in fields(self)}
        converted: dict[str, Any] = {}
        for name, value in values.items():
            if name not in known:
                raise SettingsError(f"unknown server setting {name!r} (known: {', '.join(known)})")
            converted[name] = _convert(name, value)
        return replace(self, **converted)


def _convert(name: str, value: Any) -> Any:
    if name in ("cds_audience", "webhook_allow"):
        return _strings(name, value)
    if name == "cds_issuers":
        return _issuers(value)
    try:
        if name in ("rules", "keys_file"):
            return Path(value)
        if name in ("max_body_bytes", "rate_burst", "audit_threads"):
            number: Any = int(value)
        elif name in ("rate_per_minute", "max_wait_seconds"):
            number = float(value)
        else:
            return str(value)
    except (TypeError, ValueError):
        raise SettingsError(f"server setting {name} must be a number, not {value!r}") from None
    if number <= 0:
        raise SettingsError(f"server setting {name} must be positive, not {value!r}")
    return number


def _strings(name: str, value: Any) -> tuple[str, ...]:
    """A list, or one comma-separated string (the environment's form)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
        raise SettingsError(f"server setting {name} must be a list of strings, not {value!r}")
    return tuple(item.strip() for item in items if item.strip())


def _issuers(value: Any) -> tuple[CdsIssuer, ...]:
    """``[[cds_issuers]]`` tables, or the same as a JSON list (the environment's form)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError:
            raise SettingsError("server setting cds_issuers: not JSON") from None
    if not isinstance(value, list | tuple):
        raise SettingsError("server setting cds_issuers must be a list of {iss, jwks_url, facilities}")
    issuers: list[CdsIssuer] = []
    for n, entry in enumerate(value, 1):
        iss = entry.get("iss") if isinstance(entry, dict) else None
        url = entry.get("jwks_url") if isinstance(entry, dict) else None
        facilities = entry.get("facilities") if isinstance(entry, dict) else None
        if not isinstance(iss, str) or not iss or not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise SettingsError(f"server setting cds_issuers #{n}: iss and an http(s) jwks_url are required")
        if not isinstance(facilities, list) or not facilities or not all(isinstance(f, str) and f for f in facilities):
            raise SettingsError(f"server setting cds_issuers #{n} ({iss}): facilities must be a non-empty list")
        issuers.append(CdsIssuer(iss, url, frozenset(facilities)))
    if len({issuer.iss for issuer in issuers}) != len(issuers):
        raise SettingsError("server setting cds_issuers: two entries share an iss")
    return tuple(issuers)
