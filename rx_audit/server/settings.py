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
==========================  ===============================  ======================
"""

from __future__ import annotations

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
}


class SettingsError(ValueError):
    """A setting that cannot be used (one line naming it)."""


@dataclass(frozen=True)
class Settings:
    rules: Path = Path("rules")
    db_url: str = "sqlite:///rx_audit.db"
    keys_file: Path = Path("keys.toml")
    max_body_bytes: int = 1_000_000
    rate_per_minute: float = 600.0
    rate_burst: int | None = None
    max_wait_seconds: float = 25.0  # below the graceful-shutdown time: a stop loses no long poll

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
    try:
        if name in ("rules", "keys_file"):
            return Path(value)
        if name in ("max_body_bytes", "rate_burst"):
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
