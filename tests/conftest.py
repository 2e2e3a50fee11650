"""Shared fixtures: the shipped rulebook, loaded once, and its reference reading."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rx_audit import Auditor

ROOT = Path(__file__).resolve().parent.parent
RULES = Path(os.environ.get("RX_AUDIT_TEST_RULES", ROOT / "rules"))
EXAMPLES = ROOT / "examples"
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def rules_dir() -> Path:
    return RULES


@pytest.fixture(scope="session")
def auditor() -> Auditor:
    return Auditor.from_path(RULES)


@pytest.fixture(scope="session")
def reference_book():
    from tests import reference

    return reference.load(RULES)
