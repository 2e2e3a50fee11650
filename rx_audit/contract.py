"""The outside contract as pydantic models: a prescription in, an audit result out, and their vocabularies.

See ``../shared/CONTRACT.md`` §1–2. Unknown fields are kept (``extra="allow"``) and ignored,
never an error; numbers must be finite, so a ``NaN`` dose cannot slip past a comparison.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from rx_audit.errors import PrescriptionError
from rx_audit.text import MAX_ITEMS, MAX_LIST, MAX_RECORD_BYTES, InputLimitError, TextNote, sanitise


def _not_bool(value: Any) -> Any:
    # JSON true is not the number 1: `age_years: true` once read as a one-year-old.
    if isinstance(value, bool):
        raise ValueError("应为数字，不是布尔值 (a number, not true/false)")
    return value


Number = Annotated[float, BeforeValidator(_not_bool)]
# The earliest date a record may carry: a patient born before it would be over 130.
_EARLIEST = date(1890, 1, 1)


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
        return SEVERITY_RANK[self.value]

    @property
    def label_zh(self) -> str:
        return SEVERITY_LABELS_ZH[self.value]


# The only copies of the order and the Chinese words of the severities (CONTRACT §2).
SEVERITY_RANK = {"info": 1, "warning": 2, "critical": 3}
SEVERITY_LABELS_ZH = {"info": "提示", "warning": "警示", "critical": "拦截"}


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
    legality = "legality"
    formulary = "formulary"

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
    "legality": "合法性",
    "formulary": "目录外用药",
}


class Facility(_Open):
    id: str | None = None
    name: str | None = None
    level: str | None = None


class Prescriber(_Open):
    id: str | None = None
    name: str | None = None
    title: str | None = None  # 医师职称 (CONTRACT §1): 住院医师 … 主任医师, 乡村医生, or the English words
    privileges: list[str] | None = None  # rights the hospital granted: antibacterial_special, narcotic, …


class Patient(_Open):
    id: str | None = None
    sex: Literal["M", "F", "U"] | None = None
    age_years: Number | None = Field(default=None, ge=0, le=130)
    birth_date: date | None = None
    # 0.2 kg: below any live-born infant; a smaller value is a unit error (and divided doses by ~0).
    weight_kg: Number | None = Field(default=None, ge=0.2, le=500)
    pregnant: bool | None = None
    lactating: bool | None = None
    egfr: Number | None = Field(default=None, ge=0, le=300)
    hepatic_impairment: Literal["none", "mild", "moderate", "severe"] | None = None
    allergies: list[str] = Field(default_factory=list, max_length=MAX_LIST)

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
    code: str | None = None  # the HIS's own drug code (CONTRACT §1), resolved through the facility's formulary
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
    diagnoses: list[Diagnosis] = Field(default_factory=list, max_length=MAX_LIST)
    items: list[Item] = Field(min_length=1, max_length=MAX_ITEMS)
    # Strings that mixed scripts (set by parse_prescription); the engine reports them.
    _text_notes: list[TextNote] = PrivateAttr(default_factory=list)

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

    @model_validator(mode="after")
    def _plausible_dates(self) -> Prescription:
        # An issue date in the future or a birth after the issue would make every age rule lie
        # (born 2099 read as age 0, a "child" finding). A day of slack covers clock and time zones.
        latest = datetime.now(UTC) + timedelta(days=1)
        if self.issued_at is not None:
            issued = self.issued_at if self.issued_at.tzinfo else self.issued_at.replace(tzinfo=UTC)
            if issued > latest:
                raise ValueError(f"issued_at: 开具时间在未来 (issued in the future: {self.issued_at.isoformat()})")
            if issued.date() < _EARLIEST:
                raise ValueError(f"issued_at: 开具时间不可信 (implausible: {self.issued_at.isoformat()})")
        born = self.patient.birth_date
        if born is not None:
            when = self.issued_at.date() if self.issued_at else latest.date()
            if born > when:
                raise ValueError(f"patient.birth_date: 出生日期晚于开具时间 (born {born} after the issue date {when})")
            if born < _EARLIEST:
                raise ValueError(f"patient.birth_date: 出生日期不可信 (implausible: {born}, age over 130)")
        return self

    @property
    def text_notes(self) -> list[TextNote]:
        return self._text_notes

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


def loads_record(text: str | bytes) -> Any:
    """One JSON record, bounded: size, nesting and number length give a ValueError, never a crash."""
    if len(text) > MAX_RECORD_BYTES:
        raise ValueError(f"记录超过 {MAX_RECORD_BYTES} 字节 (record larger than {MAX_RECORD_BYTES} bytes)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"不是合法的JSON (not JSON): {error.msg}") from error
    except RecursionError as error:
        raise ValueError("JSON嵌套过深 (JSON nested too deeply)") from error
    except (ValueError, UnicodeDecodeError) as error:  # an integer of thousands of digits, bad UTF-8
        raise ValueError(f"无法读取的JSON (unreadable JSON): {str(error)[:120]}") from error


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_prescription(data: Any, *, line: int | None = None) -> Prescription:
    """Validate one prescription; raise :class:`PrescriptionError` naming its id and field.

    Text is normalised first (:mod:`rx_audit.text`): what the rules compare is what the
    pharmacist reads, whatever invisible or look-alike characters the HIS sent.
    """
    if isinstance(data, Prescription):
        return data
    if isinstance(data, (str, bytes)):
        try:
            data = loads_record(data)
        except ValueError as error:
            raise PrescriptionError(None, None, str(error), line=line) from error
    if not isinstance(data, dict):
        raise PrescriptionError(None, None, "处方必须是JSON对象 (a prescription is a JSON object)", line=line)
    raw_id = data.get("id")
    prescription_id = _short(raw_id)[:80] if raw_id is not None and not isinstance(raw_id, str) else raw_id
    try:
        data, notes = sanitise(data)
    except InputLimitError as error:
        raise PrescriptionError(prescription_id, error.path, error.message, line=line) from error
    prescription_id = data.get("id") if isinstance(data.get("id"), str) else prescription_id
    try:
        prescription = Prescription.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        if not first["loc"] and ": " in message:
            # Our own cross-field checks name their field in the message ("patient.birth_date: …").
            field, _, message = message.partition(": ")
        else:
            message = f"{message} (input: {_short(first.get('input'))})"
        raise PrescriptionError(
            str(prescription_id)[:200] if prescription_id is not None else None, field or None, message, line=line
        ) from error
    prescription._text_notes = notes
    return prescription
