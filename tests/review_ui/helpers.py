"""Prescriptions and audit results for seeding a review queue in the UI tests.

The results are built by hand (not by the engine) so the UI tests do not depend on the rulebook's
content; each carries one finding on item 1 with the fields the UI shows.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from rx_audit import AuditResult, Finding

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


# --- markdown-injection payloads (red team): every text field an HIS controls carries them -------

EVIL_HOST = "evil.test"
PAYLOAD = (
    f"![x](http://{EVIL_HOST}/img.png) [点此](http://{EVIL_HOST}/phish) <img src=http://{EVIL_HOST}/h.png> "
    f"<a href='http://{EVIL_HOST}/a'>a</a> http://{EVIL_HOST}/auto www.{EVIL_HOST} x@{EVIL_HOST} "
    f":red[red] $x^2$ **bold**"
)


def evil_prescription(n: int = 900, facility: str = "LZH") -> dict[str, Any]:
    record = prescription(n, facility=facility)
    record["id"] = f"RX-EVIL-{n} {PAYLOAD}"
    record["facility"]["name"] = f"分院 {PAYLOAD}"
    record["department"] = f"全科 {PAYLOAD}"
    record["prescriber"]["id"] = f"D1 {PAYLOAD}"
    record["patient"]["id"] = f"`P-9` ``{PAYLOAD}``"
    record["patient"]["allergies"] = [f"青霉素 {PAYLOAD}"]
    record["diagnoses"] = [{"code": f"E11 {PAYLOAD}", "name": f"糖尿病 {PAYLOAD}"}]
    record["items"][1]["drug"] = f"未知药 {PAYLOAD}"
    record["items"][1]["frequency"] = f"qd {PAYLOAD}"
    return record


def evil_result(record: dict[str, Any]) -> AuditResult:
    finding = Finding(
        rule="unknown.drug",
        category="contraindication",
        severity="critical",
        item="2",
        message=f"未知药品 {PAYLOAD}",
        source=f"rules/x.yaml:1 {PAYLOAD}",
        evidence={"drug": f"未知药 {PAYLOAD}"},
        reference=f"说明书 {PAYLOAD}",
    )
    return AuditResult(id=record["id"], flagged=True, severity="critical", rulebook="sha256:t", findings=[finding])
