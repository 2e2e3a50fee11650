"""Fixtures for the review UI tests: a temp SQLite queue, the demo users, AppTest sessions."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.review_ui.helpers import APP, DEMO_USERS, RULES

USERS = {
    "yao01": {"id": "yao01", "name": "王药师 (demo)", "role": "pharmacist", "facilities": [], "via": "password"},
    "yao02": {
        "id": "yao02",
        "name": "李药师 (demo)",
        "role": "pharmacist",
        "facilities": ["LZH", "HXZ"],
        "via": "password",
    },
    "admin": {"id": "admin", "name": "药剂科主任 (demo)", "role": "admin", "facilities": [], "via": "password"},
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end test in a real browser (chromium)")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every UI test runs on a SQLite file and on PostgreSQL (``RX_AUDIT_TEST_PG_URL``, one schema
    per test, dropped afterwards). Without that URL the PostgreSQL cases skip locally and fail in CI
    (``eval "$(scripts/postgres.sh)"`` starts a server and sets it)."""
    from rx_audit import migrate

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'review.db'}"
        migrate(url)  # the schema is the migrations' (ReviewQueue runs no DDL)
        yield url
        return
    base = os.environ.get("RX_AUDIT_TEST_PG_URL")
    if not base:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("RX_AUDIT_TEST_PG_URL not set: in CI the PostgreSQL cases must run")
        pytest.skip('RX_AUDIT_TEST_PG_URL not set (eval "$(scripts/postgres.sh)")')
    from sqlalchemy import create_engine, make_url, text

    # The owner role (RX_AUDIT_TEST_PG_OWNER_URL) creates the schema and migrates it; the UI runs as
    # the application role, with what migrate() grants it.
    owner = os.environ.get("RX_AUDIT_TEST_PG_OWNER_URL") or base
    app_role = make_url(base).username
    schema = "ui_" + uuid.uuid4().hex[:12]
    engine = create_engine(owner)
    with engine.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in base else "?"
    owner_separator = "&" if "?" in owner else "?"
    migrate(f"{owner}{owner_separator}options=-csearch_path%3D{schema}", grant_to=[app_role] if owner != base else [])
    yield f"{base}{separator}options=-csearch_path%3D{schema}"
    with engine.begin() as connection:
        connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    engine.dispose()


@pytest.fixture
def ui_env(db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """Point the UI at a fresh database, the demo users and the shipped rulebook."""
    monkeypatch.setenv("RX_AUDIT_DB_URL", db_url)
    monkeypatch.delenv("RX_AUDIT_DB", raising=False)  # its alias: a different value would be refused
    monkeypatch.setenv("RX_AUDIT_USERS", str(DEMO_USERS))
    monkeypatch.setenv("RX_AUDIT_RULES", str(RULES))
    monkeypatch.delenv("RX_AUDIT_CONFIG", raising=False)
    monkeypatch.delenv("RX_AUDIT_REASONS", raising=False)
    monkeypatch.delenv("RX_AUDIT_REFRESH_SECONDS", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray rx_audit.toml from the working directory
    yield db_url
    from review_ui import backend

    backend._queue.clear()  # on_release closes each queue's connection pool


@pytest.fixture
def queue(ui_env: str):
    from rx_audit import ReviewQueue

    q = ReviewQueue(ui_env)
    yield q
    q.close()


@pytest.fixture
def app(ui_env: str) -> Callable[..., AppTest]:
    """``app("yao01")`` — an AppTest of ``review_ui/streamlit_app.py`` signed in as that demo user
    (``app(None)``: signed out). Not yet run."""

    def make(user: str | None = "yao01", timeout: float = 30) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=timeout)
        if user is not None:
            at.session_state["rx_user"] = dict(USERS[user])
        return at

    return make


def all_text(at: AppTest) -> str:
    """Every string the app rendered (markdown, titles, metrics, tables, alerts…)."""
    parts: list[str] = []

    def walk(node) -> None:
        for attr in ("value", "body", "label", "help", "placeholder"):
            value = getattr(node, attr, None)
            if isinstance(value, str):
                parts.append(value)
        proto = getattr(node, "proto", None)
        if proto is not None and node.type in ("arrow_data_frame", "dataframe"):
            with contextlib.suppress(Exception):
                parts.append(node.value.to_string())
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(parts)
