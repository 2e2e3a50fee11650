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
MAX_FAILURES = 5
LOCKOUT_SECONDS = 60.0

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
    """Failed sign-ins per user name, shared by all sessions of this server process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[str, list[float]] = {}

    def locked_for(self, username: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = [t for t in self._failures.get(username, []) if now - t < LOCKOUT_SECONDS]
            self._failures[username] = recent
            if len(recent) >= MAX_FAILURES:
                return LOCKOUT_SECONDS - (now - recent[0])
            return 0.0

    def fail(self, username: str) -> None:
        with self._lock:
            self._failures.setdefault(username, []).append(time.monotonic())

    def clear(self, username: str) -> None:
        with self._lock:
            self._failures.pop(username, None)


throttle = _Throttle()


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
