"""The UI's handles on the outside world: settings, users, the review queue and the auditor.

Both the queue and the auditor are process-wide resources (``st.cache_resource``) keyed by
database URL / rulebook path, shared by every pharmacist's session: one connection pool, one
compiled rulebook (the engine is thread-safe and hot-swaps on ``reload``).

The UI talks to the library only through the ``rx_audit`` package (an import-linter contract).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import streamlit as st

from review_ui import auth, ui
from review_ui.config import ConfigError, Settings, load_settings
from rx_audit import Auditor, SchemaVersionError

if TYPE_CHECKING:
    from review_ui.service import ReviewService
    from rx_audit import ReviewQueue

log = logging.getLogger("rx_audit.review_ui")


def settings_or_stop() -> Settings:
    try:
        return load_settings()
    except ConfigError as error:
        st.error(str(error))
        st.stop()
        raise  # unreachable; keeps type checkers happy


@st.cache_resource(show_spinner=False, ttl=60)
def _users(path: str) -> dict[str, auth.UserRecord]:
    return auth.load_users(path)


def users_or_none(settings: Settings) -> dict[str, auth.UserRecord] | None:
    """The users file's records, or None when no file is configured. Errors stop the page."""
    if not settings.users:
        return None
    try:
        return _users(settings.users)
    except auth.UsersFileError as error:
        st.error(str(error))
        st.stop()
        raise


def signed_in_user(settings: Settings) -> auth.User | None:
    """The signed-in user (password session or st.login identity), or None."""
    user = auth.current_user()
    if user is not None:
        if not auth.touch_or_expire(settings.idle_minutes):
            st.session_state["rx_signed_out_idle"] = True
            return None
        return user
    if auth.oidc_configured():
        try:
            logged_in = bool(st.user.is_logged_in)
        except Exception:
            logged_in = False
        if logged_in:
            records = users_or_none(settings) or {}
            email = str(st.user.get("email") or "") or None
            name = str(st.user.get("name") or "") or None
            mapped = auth.user_for_oidc(records, email, name, settings.oidc_default_role)
            if mapped is None:
                st.session_state["rx_oidc_refused"] = email or "?"
                return None
            auth.set_user(mapped)
            return mapped
    return None


@st.cache_resource(
    show_spinner="连接审方队列 connecting to the review queue…", max_entries=4, on_release=lambda q: q.close()
)
def _queue(db_url: str) -> ReviewQueue:
    # Imported here: the queue's database stack loads when the first page needs the queue.
    from rx_audit import ReviewQueue

    return ReviewQueue(db_url)


def queue(settings: Settings) -> ReviewQueue:
    """The shared ReviewQueue for ``settings.db_url``; a friendly stop if it cannot open.

    A database that is not at the current schema says so, with the command that fixes it
    (``rx-audit queue migrate``); the queue never creates or alters tables itself."""
    try:
        return _queue(settings.db_url)
    except SchemaVersionError as error:
        log.error("review queue at %s not migrated: %s", settings.redacted_db_url(), error)
        st.error(f"审方队列数据库需要迁移 (the review queue database must be migrated): {ui.md(error)}")
        st.stop()
        raise
    except Exception as error:
        log.error("cannot open review queue at %s: %s", settings.redacted_db_url(), type(error).__name__)
        st.error(f"无法连接审方队列数据库 (cannot open the review queue): {ui.md(settings.redacted_db_url())}")
        st.stop()
        raise


@st.cache_resource(show_spinner="加载规则库 loading the rulebook…", max_entries=4, on_release=lambda a: a.close())
def _auditor(rules: str) -> Auditor:
    return Auditor.from_path(rules)


def auditor(settings: Settings) -> Auditor:
    """The shared Auditor for ``settings.rules``; a friendly stop if it cannot load."""
    try:
        return _auditor(settings.rules)
    except Exception as error:
        log.error("cannot load rulebook %s: %s", settings.rules, type(error).__name__)
        st.error(f"无法加载规则库 (cannot load the rulebook) {ui.md(settings.rules)}: {ui.md(error)}")
        st.stop()
        raise


def service(settings: Settings, user: auth.User) -> ReviewService:
    """The pages' only handle on the queue: every call scoped to ``user``'s facilities."""
    from review_ui.service import ReviewService

    return ReviewService(queue(settings), user, cache_key=settings.db_url)


def require_user() -> auth.User:
    """Defence in depth for page scripts: never render a page without a signed-in user."""
    user = auth.current_user()
    if user is None:
        st.warning("请先登录 (please sign in).")
        st.stop()
    assert user is not None
    return user


def require_admin() -> auth.User:
    user = require_user()
    if not user.is_admin:
        st.error("仅管理员可用 (admins only).")
        st.stop()
    return user
