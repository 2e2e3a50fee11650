"""The outside contract as pydantic models: a prescription in, an audit result out.

See ``../shared/CONTRACT.md`` §1–2. Unknown fields are kept (``extra="allow"``) and ignored,
never an error; numbers must be finite, so a ``NaN`` dose cannot slip past a comparison.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rx_audit.errors import PrescriptionError

Number = float


class _Open(BaseModel):
    """Contract objects: unknown fields are kept, numbers must be finite."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, populate_by_name=True)


class Severity(StrEnum):
    """CDS Hooks' three indicator levels, ordered."""

    info = "info"
    warning = "warning"
    critical = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self.value]

    @property
    def label_zh(self) -> str:
        return {"info": "提示", "warning": "警示", "critical": "拦截"}[self.value]


_SEVERITY_RANK = {"info": 1, "warning": 2, "critical": 3}


class Category(StrEnum):
    """The review items of 医疗机构处方审核规范 (CONTRACT §2)."""

    indication = "indication"
    dose = "dose"
    route = "route"
    duplicate = "duplicate"
    interaction = "interaction"
    contraindication = "contraindication"
    duration = "duration"
    completeness = "completeness"

    @property
    def label_zh(self) -> str:
        return CATEGORY_LABELS_ZH[self.value]


CATEGORY_LABELS_ZH = {
    "indication": "适应证不适宜",
    "dose": "用法、用量不适宜",
    "route": "剂型与给药途径不适宜",
    "duplicate": "重复给药",
    "interaction": "相互作用",
    "contraindication": "用药禁忌",
    "duration": "处方用量/天数不适宜",
    "completeness": "规范性",
}


class Facility(_Open):
    id: str | None = None
    name: str | None = None
    level: str | None = None


class Prescriber(_Open):
    id: str | None = None
    name: str | None = None


class Patient(_Open):
    id: str | None = None
    sex: Literal["M", "F", "U"] | None = None
    age_years: Number | None = Field(default=None, ge=0, le=150)
    birth_date: date | None = None
    weight_kg: Number | None = Field(default=None, gt=0, le=500)
    pregnant: bool | None = None
    lactating: bool | None = None
    egfr: Number | None = Field(default=None, ge=0, le=300)
    hepatic_impairment: Literal["none", "mild", "moderate", "severe"] | None = None
    allergies: list[str] = Field(default_factory=list)

    @field_validator("sex", mode="before")
    @classmethod
    def _sex_upper(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().upper()
            return {"男": "M", "女": "F", "MALE": "M", "FEMALE": "F", "": None}.get(value, value)
        return value


class Diagnosis(_Open):
    code: str | None = None
    name: str | None = None


class Quantity(_Open):
    """An amount with its unit, e.g. ``{"value": 500, "unit": "mg"}``."""

    # A bound no real dose reaches: beyond it the number is an input error, named as such.
    value: Number = Field(ge=0, le=1e9)
    unit: str = Field(min_length=1)


class Item(_Open):
    id: str | None = None
    drug: str = Field(min_length=1)
    atc: str | None = None
    form: str | None = None
    strength: Quantity | None = None
    dose: Quantity | None = None
    frequency: str | None = None
    route: str | None = None
    days: Number | None = Field(default=None, ge=0, le=3650)
    quantity: Quantity | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value


class Prescription(_Open):
    id: str = Field(min_length=1)
    issued_at: datetime | None = None
    visit_type: Literal["outpatient", "emergency", "inpatient", "chronic"] = "outpatient"
    facility: Facility = Field(default_factory=Facility)
    prescriber: Prescriber = Field(default_factory=Prescriber)
    department: str | None = None
    patient: Patient = Field(default_factory=Patient)
    diagnoses: list[Diagnosis] = Field(default_factory=list)
    items: list[Item] = Field(min_length=1)

    @field_validator("id", mode="before")
    @classmethod
    def _prescription_id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @field_validator("diagnoses", mode="before")
    @classmethod
    def _diagnosis_strings(cls, value: Any) -> Any:
        # A bare code string is how many HIS exports write a diagnosis.
        if isinstance(value, list):
            return [{"code": entry} if isinstance(entry, str) else entry for entry in value]
        return value

    @model_validator(mode="after")
    def _number_items(self) -> Prescription:
        # CONTRACT §2: an item without id is named by its 1-based position.
        for position, item in enumerate(self.items, start=1):
            if item.id is None:
                item.id = str(position)
        return self

    def age_years_at_issue(self) -> float | None:
        """Age in years: ``age_years`` if given, else from ``birth_date`` at ``issued_at``."""
        if self.patient.age_years is not None:
            return float(self.patient.age_years)
        if self.patient.birth_date is None:
            return None
        when = self.issued_at.date() if self.issued_at else date.today()
        days = (when - self.patient.birth_date).days
        return max(days, 0) / 365.25


class Finding(BaseModel):
    """One problem the audit found, explained: which rule, where it is written, what fired it."""

    model_config = ConfigDict(use_enum_values=True)

    rule: str
    category: Category
    severity: Severity
    item: str | None = None
    message: str
    source: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    reference: str | None = None

    def to_contract(self) -> dict[str, Any]:
        data = self.model_dump(exclude_none=True)
        return data


class AuditResult(BaseModel):
    """The audit of one prescription (CONTRACT §2)."""

    id: str
    flagged: bool
    severity: Severity | None = None
    rulebook: str
    findings: list[Finding] = Field(default_factory=list)

    def to_contract(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "flagged": self.flagged,
            "severity": self.severity.value if self.severity else None,
            "rulebook": self.rulebook,
            "findings": [finding.to_contract() for finding in self.findings],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_contract(), ensure_ascii=False)


class RecordError(BaseModel):
    """A record of a batch that could not be read; the rest of the batch goes on."""

    id: str | None = None
    line: int | None = None
    field: str | None = None
    error: str

    def to_contract(self) -> dict[str, Any]:
        return {"id": self.id, "line": self.line, "field": self.field, "error": self.error}

    def to_json(self) -> str:
        return json.dumps(self.to_contract(), ensure_ascii=False)


def parse_prescription(data: Any, *, line: int | None = None) -> Prescription:
    """Validate one prescription; raise :class:`PrescriptionError` naming its id and field."""
    if isinstance(data, Prescription):
        return data
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as error:
            raise PrescriptionError(None, None, f"不是合法的JSON (not JSON): {error.msg}", line=line) from error
    if not isinstance(data, dict):
        raise PrescriptionError(None, None, "处方必须是JSON对象 (a prescription is a JSON object)", line=line)
    prescription_id = data.get("id")
    try:
        return Prescription.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise PrescriptionError(
            str(prescription_id) if prescription_id is not None else None,
            field,
            f"{first['msg']} (input: {first.get('input')!r})",
            line=line,
        ) from error
