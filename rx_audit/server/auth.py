"""API keys: ``Authorization: Bearer <key>``; the keys file holds only their sha256 hashes, each bound
to the facilities it may submit for and read. A per-key token bucket limits the request rate.

The keys file (TOML; ``python -m rx_audit.server.keys new --facility LZH`` prints a block)::

    [[key]]
    id = "lzh-his"                       # in logs and metrics; never the key itself
    sha256 = "9f86d08188…"               # hex sha256 of the key
    facilities = ["LZH", "LZH-HW"]
    admin = true                         # optional: may also call /v1/admin/* (rulebook reload)

Keys are 256-bit random tokens, so one unsalted sha256 is enough (a slow hash such as bcrypt
protects guessable passwords, not random keys, and would cost every request).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KEY_PREFIX = "rxk_"


class KeysFileError(ValueError):
    """The keys file cannot be used (one line naming the file and the entry)."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    digest: str
    facilities: frozenset[str]
    admin: bool = False


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_entry(key_id: str, key: str, facilities: list[str], *, admin: bool = False) -> str:
    """The TOML block of a key for the keys file (the hash only)."""
    listed = ", ".join(f'"{facility}"' for facility in facilities)
    block = f'[[key]]\nid = "{key_id}"\nsha256 = "{hash_key(key)}"\nfacilities = [{listed}]\n'
    return block + ("admin = true\n" if admin else "")


class KeyRing:
    """The keys of one keys file, looked up by the hash of the presented key."""

    def __init__(self, keys: list[ApiKey]):
        self._by_digest = {key.digest: key for key in keys}

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise KeysFileError(f"cannot read the keys file {path}: {error}") from None
        keys: list[ApiKey] = []
        for position, entry in enumerate(data.get("key", []), 1):
            keys.append(_entry(path, position, entry))
        ids = [key.id for key in keys]
        if len(set(ids)) != len(ids):
            raise KeysFileError(f"{path}: two keys share an id")
        if not keys:
            raise KeysFileError(f"{path}: no [[key]] entries (create one: python -m rx_audit.server.keys new)")
        return cls(keys)

    def __len__(self) -> int:
        return len(self._by_digest)

    def find(self, presented: str) -> ApiKey | None:
        digest = hash_key(presented)
        key = self._by_digest.get(digest)
        if key is not None and hmac.compare_digest(key.digest, digest):
            return key
        return None


def _entry(path: Path, position: int, entry: object) -> ApiKey:
    where = f"{path}: key #{position}"
    if not isinstance(entry, dict):
        raise KeysFileError(f"{where} is not a table")
    key_id, digest, facilities = entry.get("id"), entry.get("sha256"), entry.get("facilities")
    if not isinstance(key_id, str) or not key_id:
        raise KeysFileError(f"{where}: id missing")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
        raise KeysFileError(f"{where} ({key_id}): sha256 must be 64 hex digits")
    if not isinstance(facilities, list) or not facilities or not all(isinstance(f, str) and f for f in facilities):
        raise KeysFileError(f"{where} ({key_id}): facilities must be a non-empty list of facility ids")
    admin = entry.get("admin", False)
    if not isinstance(admin, bool):
        raise KeysFileError(f"{where} ({key_id}): admin must be true or false")
    return ApiKey(key_id, digest.lower(), frozenset(facilities), admin)


class RateLimiter:
    """A token bucket per key: ``burst`` requests at once, refilled at ``per_minute``. Per worker
    process (several workers or instances each allow that much)."""

    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key_id: str) -> float:
        """0.0 when the request may go on, else the seconds until a token is free."""
        with self._lock:
            now = self.clock()
            tokens, then = self._buckets.get(key_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / self.rate if self.rate > 0 else 60.0
