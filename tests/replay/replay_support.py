"""Test support for replay: a deterministic stand-in auditor and a batch generator.

The stand-in (``replay_support:make_auditor``) lets the replay, crash and concurrency tests run
without depending on the rulebook under construction; the real engine is exercised by the
benchmark and the MIMIC test when ``rules/`` loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rx_audit.contract import AuditResult, Finding, parse_prescription

FACILITIES = [("LZH", "凉州户镇分院"), ("HXZ", "黄羊镇卫生院"), ("WWZ", "武威市中心医院"), ("QLZ", "清源镇卫生院")]
DEPARTMENTS = ["全科", "内科", "儿科", "急诊科"]
DRUGS = [
    ("二甲双胍", 500, "mg", "tid"),
    ("格列齐特", 80, "mg", "bid"),
    ("格列美脲", 2, "mg", "qd"),
    ("阿司匹林", 100, "mg", "qd"),
    ("华法林", 3, "mg", "qd"),
]


class FakeAuditor:
    """Flags by simple arithmetic rules; ``rules`` ending in ``new`` lowers the dose limit (for --compare)."""

    def __init__(self, rules: str = "fake"):
        self.limit = 150 if str(rules).endswith("new") else 1000
        self.rulebook_hash = "sha256:" + hashlib.sha256(f"fake:{self.limit}".encode()).hexdigest()

    def audit(self, record: Any) -> AuditResult:
        rx = parse_prescription(record)
        if rx.id == os.environ.get("RX_AUDIT_TEST_FREEZE_ID"):
            _freeze()
        findings: list[Finding] = []
        for item in rx.items:
            if (
                item.dose
                and item.dose.value * {"qd": 1, "bid": 2, "tid": 3}.get(item.frequency or "qd", 1) > self.limit
            ):
                findings.append(
                    Finding(
                        rule="fake.dose.daily_max",
                        category="dose",
                        severity="warning",
                        item=item.id,
                        message="日剂量超量",
                        source="fake.yaml:1",
                    )
                )
            if item.drug == "二甲双胍" and rx.patient.egfr is not None and rx.patient.egfr < 30:
                findings.append(
                    Finding(
                        rule="fake.metformin.egfr",
                        category="contraindication",
                        severity="critical",
                        item=item.id,
                        message="eGFR<30",
                        source="fake.yaml:2",
                    )
                )
        if len({i.drug for i in rx.items}) < len(rx.items):
            findings.append(
                Finding(
                    rule="fake.duplicate",
                    category="duplicate",
                    severity="warning",
                    message="重复给药",
                    source="fake.yaml:3",
                )
            )
        if not rx.diagnoses:
            findings.append(
                Finding(
                    rule="fake.no_diagnosis",
                    category="completeness",
                    severity="info",
                    message="无诊断",
                    source="fake.yaml:4",
                )
            )
        rank = {"info": 1, "warning": 2, "critical": 3}
        severity = max((f.severity for f in findings), key=lambda s: rank[s], default=None)
        return AuditResult(
            id=rx.id,
            flagged=bool(severity) and rank[severity] >= 2,
            severity=severity,
            rulebook=self.rulebook_hash,
            findings=findings,
        )


def _freeze() -> None:
    """The crash test's kill point: say so through a marker file, then wait to be killed. A replay
    cannot finish past this record, so every kill is a real mid-run kill on any machine."""
    marker = os.environ.get("RX_AUDIT_TEST_FREEZE_MARK")
    if marker:
        Path(marker).write_text(str(os.getpid()), encoding="utf-8")
    time.sleep(3600)


def make_auditor(rules: Any) -> FakeAuditor:
    return FakeAuditor(str(rules))


def make_counted_auditor(rules: Any) -> FakeAuditor:
    """The stand-in, noting the process that loaded it in $RX_AUDIT_TEST_LOADS (one line a load)."""
    with open(os.environ["RX_AUDIT_TEST_LOADS"], "a", encoding="utf-8") as loads:
        loads.write(f"{os.getpid()}\n")
    return FakeAuditor(str(rules))


class ExplodingAuditor(FakeAuditor):
    """An auditor with a bug: an unexpected exception on any prescription whose id ends in BOOM."""

    def audit(self, record: Any) -> AuditResult:
        if parse_prescription(record).id.endswith("BOOM"):
            raise RuntimeError("boom: an unexpected bug while auditing")
        return super().audit(record)


def make_exploding_auditor(rules: Any) -> ExplodingAuditor:
    return ExplodingAuditor(str(rules))


def prescription(index: int, rng: random.Random, prefix: str = "RX") -> dict[str, Any]:
    facility = FACILITIES[index % len(FACILITIES)]
    items = []
    for position in range(1 + rng.random().__lt__(0.4) + rng.random().__lt__(0.1)):
        drug, dose, unit, freq = DRUGS[rng.randrange(len(DRUGS))]
        items.append(
            {
                "id": str(position + 1),
                "drug": drug,
                "form": "tablet",
                "strength": {"value": dose, "unit": unit},
                "dose": {"value": dose * rng.choice([1, 1, 1, 2]), "unit": unit},
                "frequency": freq,
                "route": "po",
                "days": rng.choice([3, 7, 14, 30]),
            }
        )
    day = 1 + index % 28
    return {
        "id": f"{prefix}-{index:07d}",
        "issued_at": f"2025-03-{day:02d}T{8 + index % 10:02d}:15:00+08:00",
        "visit_type": "outpatient",
        "facility": {"id": facility[0], "name": facility[1], "level": "township"},
        "prescriber": {"id": f"D{index % 37:03d}", "name": "医生"},
        "department": DEPARTMENTS[index % len(DEPARTMENTS)],
        "patient": {
            "id": f"P-{index % 5000}",
            "sex": "F" if index % 2 else "M",
            "age_years": 20 + index % 60,
            "egfr": rng.choice([24, 45, 74, 90, None]),
        },
        "diagnoses": [{"code": "E11.900", "name": "2型糖尿病"}] if rng.random() < 0.9 else [],
        "items": items,
    }


def write_batch(
    path: Path, count: int, *, seed: int = 7, bad_every: int = 0, prefix: str = "RX", as_array: bool = False
) -> dict[str, int]:
    """Write ``count`` lines; every ``bad_every``-th line is broken (alternating not-JSON / invalid dose)."""
    rng = random.Random(seed)
    bad = 0
    with open(path, "w", encoding="utf-8") as out:
        if as_array:
            out.write("[\n")
        for index in range(1, count + 1):
            if bad_every and index % bad_every == 0:
                bad += 1
                if (index // bad_every) % 2 and not as_array:
                    text = '{"id": "BROKEN-' + str(index) + '", "items": ['
                else:
                    record = prescription(index, rng, prefix)
                    record["items"][0]["dose"]["value"] = -5
                    text = json.dumps(record, ensure_ascii=False)
            else:
                text = json.dumps(prescription(index, rng, prefix), ensure_ascii=False)
            if as_array:
                text += ",\n" if index < count else "\n"
            else:
                text += "\n"
            out.write(text)
        if as_array:
            out.write("]\n")
    return {"lines": count, "bad": bad, "good": count - bad}


# --- database URLs for tests: SQLite file, or a fresh PostgreSQL schema ---------------------------


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pg_base_url() -> str | None:
    """The application role's URL (RX_AUDIT_TEST_PG_URL)."""
    url = os.environ.get("RX_AUDIT_TEST_PG_URL")
    if url:
        return url
    if _ci():
        pytest.fail(
            'RX_AUDIT_TEST_PG_URL is not set: CI must run the queue tests on PostgreSQL (eval "$(scripts/postgres.sh)")'
        )
    pytest.skip("RX_AUDIT_TEST_PG_URL not set (run scripts/postgres.sh); PostgreSQL case skipped locally")
    return None


def pg_owner_url() -> str:
    """The owner role's URL (RX_AUDIT_TEST_PG_OWNER_URL): creates the schemas, runs the migrations."""
    url = os.environ.get("RX_AUDIT_TEST_PG_OWNER_URL")
    if url:
        return url
    if _ci():
        pytest.fail('RX_AUDIT_TEST_PG_OWNER_URL is not set: CI runs with two roles (eval "$(scripts/postgres.sh)")')
    base = pg_base_url()
    assert base
    return base  # one role for both locally: the privilege tests skip


def with_schema(url: str, schema: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


@dataclass
class Database:
    """A test database: the application URL, the owner's URL (same on SQLite) and the app role."""

    url: str
    owner_url: str
    app_role: str | None = None

    @property
    def roles_separate(self) -> bool:
        return self.url != self.owner_url


def make_database(kind: str, tmp_path: Path, request: pytest.FixtureRequest, *, migrated: bool = True) -> Database:
    """A fresh SQLite file, or a fresh PostgreSQL schema created by the owner role and granted to the
    application role; migrated to head unless ``migrated=False``."""
    from rx_audit.queue import migrate

    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / f'queue-{uuid.uuid4().hex[:6]}.db'}"
        if migrated:
            migrate(url)
        return Database(url, url)
    base = pg_base_url()
    assert base
    owner = pg_owner_url()
    from sqlalchemy import create_engine, make_url, text

    app_role = make_url(base).username
    schema = "t_" + uuid.uuid4().hex[:12]
    engine = create_engine(owner)
    with engine.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
        if app_role and owner != base:
            connection.execute(text(f'GRANT USAGE ON SCHEMA {schema} TO "{app_role}"'))
    engine.dispose()

    def drop() -> None:
        engine = create_engine(owner)
        with engine.begin() as connection:
            connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()

    request.addfinalizer(drop)
    owner_url = with_schema(owner, schema)
    grant = [app_role] if app_role and owner != base else []
    if migrated:
        migrate(owner_url, grant_to=grant)
    return Database(with_schema(base, schema), owner_url, app_role if grant else None)


def make_db_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return make_database(kind, tmp_path, request).url


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """A migrated database on a SQLite file and on PostgreSQL (application and owner URLs)."""
    return make_database(request.param, tmp_path, request)


@pytest.fixture
def db_url(database: Database) -> str:
    """The queue and replay suites run every test on a SQLite file and on PostgreSQL (migrated; the
    application role's URL on PostgreSQL)."""
    return database.url


@pytest.fixture
def queue(db_url: str):
    from rx_audit.queue import ReviewQueue

    q = ReviewQueue(db_url)
    yield q
    q.close()
