"""An HIS installs the core alone: `pip install rx-audit` audits, with no database, web or UI stack."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

from tests.conftest import ROOT, RULES

PROBE = """
import json, sys
import rx_audit
from rx_audit import Auditor
result = Auditor.from_path(sys.argv[1]).audit({
    "id": "PKG-1", "patient": {"age_years": 70, "sex": "M", "egfr": 20, "allergies": []},
    "diagnoses": ["E11.900"],
    "items": [{"drug": "二甲双胍片", "form": "片", "dose": {"value": 500, "unit": "mg"}, "frequency": "bid",
               "route": "po", "days": 7}]})
heavy = sorted(name for name in ("streamlit", "sqlalchemy", "sqlmodel", "pandas", "psycopg", "alembic", "altair")
               if name in sys.modules)
print(json.dumps({"severity": str(result.severity), "flagged": result.flagged, "heavy": heavy}))
"""


def test_core_install_audits_without_database_or_ui_packages(tmp_path: Path) -> None:
    """A fresh venv with `pip install .` (no extras): a prescription is audited, and neither streamlit,
    sqlalchemy, pandas nor psycopg is installed or imported."""
    env_dir = tmp_path / "core-venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT)],
                             capture_output=True, text=True, timeout=1500)
    assert install.returncode == 0, install.stderr[-2000:]
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                            check=True)
    installed = {entry["name"].lower() for entry in json.loads(listed.stdout)}
    assert not installed & {"streamlit", "sqlalchemy", "sqlmodel", "pandas", "psycopg", "alembic", "bcrypt"}
    probe = subprocess.run([str(python), "-c", PROBE, str(RULES)], capture_output=True, text=True, timeout=600,
                           cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr[-2000:]
    outcome = json.loads(probe.stdout.strip().splitlines()[-1])
    assert outcome == {"severity": "critical", "flagged": True, "heavy": []}
    # The CLI of the core works too, and says so instead of failing on a missing queue module.
    cli = subprocess.run([str(env_dir / "bin" / "rx-audit"), "rules", "check", str(RULES)], capture_output=True,
                         text=True, timeout=600, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert sys.version_info[:2] >= (3, 11)
