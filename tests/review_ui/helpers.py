"""Prescriptions and audit results for seeding a review queue in the UI tests.

The results are built by hand (not by the engine) so the UI tests do not depend on the rulebook's
content; each carries one finding on item 1 with the fields the UI shows.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from rx_audit.models import AuditResult, Finding

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "review_ui" / "streamlit_app.py"
DEMO_USERS = ROOT / "review_ui" / "users.demo.toml"
RULES = Path(os.environ.get("RX_AUDIT_TEST_RULES", ROOT / "rules"))

FACILITIES = ["LZH", "HXZ", "DSZ"]
CHINA = timezone(timedelta(hours=8))


def prescription(n: int, *, facility: str | None = None, egfr: float = 24, when: datetime | None = None) -> dict:
    issued = when or datetime(2025, 3, 26, 10, 15, tzinfo=CHINA) + timedelta(minutes=n)
    fac = facility or FACILITIES[n % len(FACILITIES)]
    return {
        "id": f"RX-{n:06d}",
        "issued_at": issued.isoformat(),
        "visit_type": "outpatient",
        "facility": {"id": fac, "name": f"{fac}分院", "level": "township"},
        "prescriber": {"id": f"D{n % 7:03d}", "name": "测试医生"},
        "department": "全科",
        "patient": {
            "id": f"P-{n:05d}",
            "name": "患者姓名不应出现",
            "sex": "F",
            "age_years": 72,
            "weight_kg": 58,
            "egfr": egfr,
            "pregnant": False,
            "allergies": ["青霉素"],
        },
        "diagnoses": [{"code": "E11.900", "name": "2型糖尿病"}],
        "items": [
            {
                "id": "1",
                "drug": "二甲双胍",
                "form": "tablet",
                "strength": {"value": 500, "unit": "mg"},
                "dose": {"value": 500, "unit": "mg"},
                "frequency": "tid",
                "route": "po",
                "days": 30,
            },
            {
                "id": "2",
                "drug": "阿托伐他汀",
                "form": "tablet",
                "dose": {"value": 20, "unit": "mg"},
                "frequency": "qn",
                "route": "po",
                "days": 30,
            },
        ],
    }


def result(record: dict, severity: str = "critical", rulebook: str = "sha256:test") -> AuditResult:
    finding = Finding(
        rule="metformin.contraindication.egfr_lt_30",
        category="contraindication",
        severity=severity,
        item="1",
        message=f"eGFR {record['patient']['egfr']} < 30：二甲双胍禁用",
        source="rules/drugs/metformin.yaml:41",
        evidence={"egfr": record["patient"]["egfr"], "limit": 30},
        reference="说明书【禁忌】严重肾功能不全",
    )
    return AuditResult(id=record["id"], flagged=True, severity=severity, rulebook=rulebook, findings=[finding])


def seed(queue: Any, count: int, start: int = 1, **kwargs: Any) -> list[Any]:
    """Submit ``count`` flagged prescriptions; returns what ``submit`` returned for each."""
    out = []
    for n in range(start, start + count):
        record = prescription(n, **kwargs)
        out.append(queue.submit(record, result(record)))
    return out
