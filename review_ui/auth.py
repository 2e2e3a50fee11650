"""Who is signed in: users file with bcrypt-hashed passwords, or Streamlit's ``st.login`` (OIDC).

Users file (TOML, or YAML with the same shape; path from ``RX_AUDIT_USERS`` or the config file)::

    [users.yao01]
    name = "王药师"
    role = "pharmacist"                 # pharmacist | admin
    password_hash = "$2b$12$..."       # python -m review_ui.auth hash
    facilities = ["LZH", "HXZ"]         # optional: the facilities this pharmacist reviews
    email = "wang@example.org"          # optional: matches an st.login (OIDC) identity

OIDC: when ``.streamlit/secrets.toml`` has an ``[auth]`` section (and Authlib is installed),
the sign-in page offers ``st.login``. The signed-in e-mail is looked up in the users file for
a role; unknown identities get ``oidc_default_role`` from the config, or are refused.

Every decision is attributed to ``User.id``. Passwords and hashes are never logged or shown.
"""

from __future__ import annotations

import getpass
import logging
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt

ROLES = ("pharmacist", "admin")
ROLE_LABELS = {"pharmacist": "药师 pharmacist", "admin": "管理员 admin"}
SESSION_KEY = "rx_user"
MAX_FAILURES = 5  # failed sign-ins per LOCKOUT_SECONDS per (user name, client address)
GLOBAL_MAX_FAILURES = 50  # per LOCKOUT_SECONDS per user name from all addresses (see _Throttle)
LOCKOUT_SECONDS = 60.0
KNOWN_ADDRESS_SECONDS = 30 * 86400.0

log = logging.getLogger("rx_audit.review_ui.auth")

# A real hash of a random password: checking unknown user names against it takes as long as a
# real check, so response time does not tell which user names exist.
_DUMMY_HASH = bcrypt.hashpw(b"rx-audit-no-such-user", bcrypt.gensalt(rounds=10))


class UsersFileError(Exception):
    """The users file cannot be read or is malformed."""


@dataclass(frozen=True)
class User:
    """A signed-in person. ``id`` is what the queue records as the pharmacist."""

    id: str
    name: str
    role: str
    facilities: tuple[str, ...] = ()
    email: str | None = None
    via: str = "password"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def to_session(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "facilities": list(self.facilities),
            "email": self.email,
            "via": self.via,
        }

    @classmethod
    def from_session(cls, data: dict[str, Any]) -> User:
        return cls(
            id=data["id"],
            name=data.get("name") or data["id"],
            role=data.get("role", "pharmacist"),
            facilities=tuple(data.get("facilities") or ()),
            email=data.get("email"),
            via=data.get("via", "password"),
        )


@dataclass(frozen=True)
class UserRecord:
    user: User
    password_hash: bytes | None = field(default=None, repr=False)


def hash_password(password: str, rounds: int = 12) -> str:
    """A bcrypt hash for the users file."""
    if not password:
        raise ValueError("empty password")
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=rounds)).decode("ascii")


def _parse(path: Path) -> dict[str, Any]:
    text = path.read_bytes()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = tomllib.loads(text.decode("utf-8"))
    if not isinstance(data, dict):
        raise UsersFileError(f"{path}: 顶层必须是表 (top level must be a table/mapping)")
    return data


def load_users(path: str | Path) -> dict[str, UserRecord]:
    """Read a users file; raise :class:`UsersFileError` naming the file and the user at fault."""
    path = Path(path)
    try:
        data = _parse(path)
    except UsersFileError:
        raise
    except Exception as error:  # OSError, TOML or YAML syntax
        raise UsersFileError(f"{path}: 无法读取用户文件 (cannot read users file): {error}") from error
    users = data.get("users")
    if not isinstance(users, dict) or not users:
        raise UsersFileError(f"{path}: 缺少 [users.<id>] 表 (no [users.<id>] tables)")
    records: dict[str, UserRecord] = {}
    for user_id, entry in users.items():
        if not isinstance(entry, dict):
            raise UsersFileError(f"{path}: users.{user_id} 必须是表 (must be a table)")
        role = entry.get("role", "pharmacist")
        if role not in ROLES:
            raise UsersFileError(f"{path}: users.{user_id}.role = {role!r}，应为 {'/'.join(ROLES)}")
        password_hash = entry.get("password_hash")
        if password_hash is not None and not str(password_hash).startswith(("$2a$", "$2b$", "$2y$")):
            raise UsersFileError(f"{path}: users.{user_id}.password_hash 不是bcrypt哈希 (not a bcrypt hash)")
        facilities = entry.get("facilities") or []
        if isinstance(facilities, str):
            facilities = [facilities]
        user = User(
            id=str(user_id),
            name=str(entry.get("name") or user_id),
            role=role,
            facilities=tuple(str(f) for f in facilities),
            email=str(entry["email"]).lower() if entry.get("email") else None,
        )
        records[str(user_id)] = UserRecord(user, str(password_hash).encode("ascii") if password_hash else None)
    return records


class _Throttle:
    """Failed sign-ins, shared by all sessions of this server process.

    Why this design (two faults were found: 16 parallel attempts got 8 password checks through a
    limit of 5, and the lockout also refused the right password, so anyone could keep a pharmacist
    locked out):

    * **Atomic.** :meth:`acquire` checks the limits *and* counts the attempt under one lock, before
      the (slow) bcrypt check runs; a success gives the reservation back. Parallel attempts can
      therefore never get more than the limit through.
    * **Keyed by user name + client address.** ``MAX_FAILURES`` per minute per (user name,
      address): an attacker at another address locks out only themself, never the real user at their
      workstation. The address is the TCP peer (``st.context.ip_address``; unforgeable), or the
      client that a configured trusted reverse proxy names (``trusted_proxies``).
    * **A global per-user ceiling, much higher** (``GLOBAL_MAX_FAILURES`` per minute from all
      addresses), so an attacker with many addresses still gets only a few guesses a minute on one
      account. It does not apply to an address this user has signed in from before (in this
      process), so even that attacker cannot lock the user out of their usual workstation.

    A delay instead of a refusal was rejected: requests would pile up in server threads, and the
    attacker's queued attempts would still delay the real user's.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[tuple[str, str], list[float]] = {}  # (user name, address) → times
        self._per_user: dict[str, list[float]] = {}  # user name → times, from every address
        self._known: dict[tuple[str, str], float] = {}  # (user name, address) → last successful sign-in

    @staticmethod
    def _recent(times: list[float], now: float) -> list[float]:
        return [t for t in times if now - t < LOCKOUT_SECONDS]

    def _sweep(self, now: float) -> None:
        # Bounded memory: random user names / addresses must not grow the tables for ever.
        if len(self._failures) + len(self._per_user) > 20_000:
            self._failures = {k: r for k, v in self._failures.items() if (r := self._recent(v, now))}
            self._per_user = {k: r for k, v in self._per_user.items() if (r := self._recent(v, now))}
        if len(self._known) > 20_000:
            self._known = {k: t for k, t in self._known.items() if now - t < KNOWN_ADDRESS_SECONDS}

    def _wait(self, username: str, address: str, now: float) -> float:
        """Seconds until an attempt is allowed (0 = now). Caller holds the lock."""
        pair = self._recent(self._failures.get((username, address), []), now)
        self._failures[(username, address)] = pair
        if len(pair) >= MAX_FAILURES:
            return max(LOCKOUT_SECONDS - (now - pair[0]), 0.001)
        everyone = self._recent(self._per_user.get(username, []), now)
        self._per_user[username] = everyone
        known = now - self._known.get((username, address), -KNOWN_ADDRESS_SECONDS) < KNOWN_ADDRESS_SECONDS
        if len(everyone) >= GLOBAL_MAX_FAILURES and not known:
            return max(LOCKOUT_SECONDS - (now - everyone[0]), 0.001)
        return 0.0

    def acquire(self, username: str, address: str = "", now: float | None = None) -> tuple[float, float]:
        """Atomically check and count one attempt: ``(0, token)`` when a password check may run now
        (the attempt is counted as a failure until :meth:`succeeded` gives it back), else
        ``(seconds to wait, 0)``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._sweep(now)
            wait = self._wait(username, address, now)
            if wait > 0:
                return wait, 0.0
            self._failures[(username, address)].append(now)
            self._per_user[username].append(now)
            return 0.0, now

    def succeeded(self, username: str, address: str = "", token: float | None = None) -> None:
        """The password was right: forget this address's failures, give the reservation back,
        remember the address as one this user signs in from."""
        now = time.monotonic()
        with self._lock:
            self._failures.pop((username, address), None)
            everyone = self._per_user.get(username, [])
            if token is not None and token in everyone:
                everyone.remove(token)
            self._known[(username, address)] = now

    # Single-step forms (tests, callers that do their own check).
    def locked_for(self, username: str, address: str = "", now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            return self._wait(username, address, now)

    def fail(self, username: str, address: str = "") -> None:
        now = time.monotonic()
        with self._lock:
            self._failures.setdefault((username, address), []).append(now)
            self._per_user.setdefault(username, []).append(now)

    def clear(self, username: str, address: str = "") -> None:
        with self._lock:
            self._failures.pop((username, address), None)


throttle = _Throttle()


@dataclass(frozen=True)
class SignInResult:
    user: User | None
    wait_seconds: float = 0.0  # > 0: refused without checking the password (too many failures)


def sign_in(records: dict[str, UserRecord], username: str, password: str, address: str = "") -> SignInResult:
    """Throttled password sign-in from ``address``; the only way the sign-in page checks a password."""
    wait, token = throttle.acquire(username, address)
    if wait > 0:
        log.warning("sign-in throttled user=%s address=%s", username, address or "local")
        return SignInResult(None, wait)
    user = verify_password(records, username, password)
    if user is None:
        log.info("sign-in failed user=%s address=%s", username, address or "local")
        return SignInResult(None)
    throttle.succeeded(username, address, token)
    return SignInResult(user)


def verify_password(records: dict[str, UserRecord], username: str, password: str) -> User | None:
    """The user if the password matches, else None. Same cost whether or not the user exists."""
    record = records.get(username)
    stored = record.password_hash if record and record.password_hash else _DUMMY_HASH
    try:
        ok = bcrypt.checkpw(password.encode("utf-8"), stored)
    except ValueError:
        ok = False
    if record is None or record.password_hash is None or not ok:
        return None
    return record.user


def user_for_oidc(
    records: dict[str, UserRecord], email: str | None, name: str | None, default_role: str | None
) -> User | None:
    """Map an ``st.login`` identity to a user: by e-mail in the users file, else the default role."""
    if not email:
        return None
    email = email.lower()
    for record in records.values():
        if record.user.email == email or record.user.id.lower() == email:
            user = record.user
            return User(user.id, user.name, user.role, user.facilities, user.email, via="oidc")
    if default_role in ROLES:
        return User(id=email, name=name or email, role=default_role, email=email, via="oidc")
    return None


# --------------------------------------------------------------------------------------------
# Streamlit side
# --------------------------------------------------------------------------------------------


def oidc_configured() -> bool:
    """True when ``st.secrets`` has an ``[auth]`` section (``st.login`` is usable)."""
    import streamlit as st

    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file at all
        return False


def authlib_installed() -> bool:
    """``st.login`` needs Authlib; without it the SSO button would only raise."""
    import importlib.util

    return importlib.util.find_spec("authlib") is not None


def client_address(trusted_proxies: tuple[str, ...] | list[str] = ()) -> str:
    """Where this session connects from, for sign-in throttling: the TCP peer (``None`` from
    Streamlit for localhost, shown as ``127.0.0.1``), or — only when that peer is a configured
    trusted reverse proxy — the last address in its ``X-Forwarded-For`` (a client could forge
    the header, a proxy we trust appends the real peer at the end)."""
    import streamlit as st

    try:
        peer = st.context.ip_address or "127.0.0.1"
    except Exception:
        peer = "127.0.0.1"
    if peer in trusted_proxies:
        try:
            forwarded = st.context.headers.get("X-Forwarded-For") or ""
        except Exception:
            forwarded = ""
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return hops[-1]
    return peer


def current_user() -> User | None:
    import streamlit as st

    data = st.session_state.get(SESSION_KEY)
    if not data:
        return None
    return User.from_session(data)


def set_user(user: User) -> None:
    import streamlit as st

    st.session_state[SESSION_KEY] = user.to_session()
    st.session_state["rx_last_seen"] = time.time()
    log.info("sign-in user=%s role=%s via=%s", user.id, user.role, user.via)


def sign_out() -> None:
    import streamlit as st

    user = current_user()
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    if user is not None:
        log.info("sign-out user=%s", user.id)
        if user.via == "oidc":
            st.logout()


def touch_or_expire(idle_minutes: float) -> bool:
    """Record activity; sign out (return False) after ``idle_minutes`` without any."""
    import streamlit as st

    now = time.time()
    last = st.session_state.get("rx_last_seen", now)
    if idle_minutes > 0 and now - last > idle_minutes * 60:
        sign_out()
        return False
    st.session_state["rx_last_seen"] = now
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m review_ui.auth hash [--rounds N]``: print a bcrypt hash for the users file."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "hash":
        print("usage: python -m review_ui.auth hash [--rounds 12]   (reads the password from the terminal)")
        return 2
    rounds = int(args[args.index("--rounds") + 1]) if "--rounds" in args else 12
    if sys.stdin.isatty():
        password = getpass.getpass("密码 password: ")
        if password != getpass.getpass("再输一次 again: "):
            print("两次输入不一致 (passwords differ)", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    print(hash_password(password, rounds=rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
