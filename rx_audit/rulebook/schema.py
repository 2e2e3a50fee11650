"""The rule-file schema: pydantic models of every section a pharmacist writes; unknown keys are typos.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rx_audit.normalise import FORM_GROUPS, ROUTES, TIMES_PER_DAY
from rx_audit.rulebook.limits import MAX_IN_VALUES
from rx_audit.rulebook.yaml_lines import LINE_KEY, LINES_KEY

SeverityName = Literal["info", "warning", "critical"]
CategoryName = Literal[
    "indication", "dose", "route", "duplicate", "interaction", "contraindication", "duration", "completeness",
    "legality", "formulary",
]
SEVERITY_RANK = {"info": 1, "warning": 2, "critical": 3}

class Spec(BaseModel):
    """A part of a rule file: unknown keys are typos, so they are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    line: int = Field(0, alias=LINE_KEY)
    key_lines: dict[str, int] = Field(default_factory=dict, alias=LINES_KEY)

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)

    @model_validator(mode="before")
    @classmethod
    def _plain_mappings_without_lines(cls, data: Any) -> Any:
        # A field typed as a plain mapping (forms, duration…) must not see the line annotations.
        if not isinstance(data, dict):
            return data
        keys = _MAPPING_FIELDS.get(cls)
        if keys is None:
            keys = _MAPPING_FIELDS[cls] = tuple(
                info.alias or name for name, info in cls.model_fields.items() if _is_mapping_type(info.annotation)
            )
        if not any(isinstance(data.get(key), dict) for key in keys):
            return data
        cleaned = dict(data)
        for key in keys:
            value = cleaned.get(key)
            if isinstance(value, dict):
                cleaned[key] = {k: v for k, v in value.items() if k not in (LINE_KEY, LINES_KEY)}
        return cleaned


_MAPPING_FIELDS: dict[type, tuple[str, ...]] = {}


def _is_mapping_type(annotation: Any) -> bool:
    if get_origin(annotation) is dict:
        return True
    return any(get_origin(arg) is dict for arg in get_args(annotation))


def known_forms(value: dict[str, list[str]]) -> dict[str, list[str]]:
    """Form groups and routes of a drug: only the vocabulary the normalisers produce."""
    for group, routes in value.items():
        if group not in FORM_GROUPS:
            raise ValueError(f"unknown form group {group!r}; one of {', '.join(FORM_GROUPS)}")
        for route in routes:
            if route not in ROUTES:
                raise ValueError(f"unknown route {route!r} for {group}; one of {', '.join(ROUTES)}")
    return value


class Condition(Spec):
    """Who a regimen or contraindication applies to: every given bound must hold."""

    age_min: float | None = Field(None, ge=0)
    age_max: float | None = Field(None, gt=0)
    egfr_min: float | None = Field(None, ge=0)
    egfr_max: float | None = Field(None, gt=0)
    weight_min: float | None = Field(None, ge=0)
    weight_max: float | None = Field(None, gt=0)
    # The item's own daily dose (drug unit) and days of supply, [min, max): a low-dose regimen
    # that is not contraindicated (aspirin 75–150 mg in pregnancy), a loading day (clopidogrel).
    daily_min: float | None = Field(None, ge=0)
    daily_max: float | None = Field(None, gt=0)
    days_min: float | None = Field(None, ge=0)
    days_max: float | None = Field(None, gt=0)
    sex: Literal["M", "F"] | None = None
    visits: list[Literal["outpatient", "emergency", "inpatient", "chronic"]] | None = None
    # None of these diagnoses: "fires unless a pacemaker is recorded" (Z95.0).
    not_diagnoses: list[str] | None = None
    pregnant: bool | None = None
    lactating: bool | None = None
    hepatic: list[Literal["mild", "moderate", "severe"]] | None = None
    diagnoses: list[str] | None = None
    release: list[Literal["normal", "sustained", "controlled", "enteric"]] | None = None
    forms: list[str] | None = None
    routes: list[str] | None = None

    @field_validator("forms")
    @classmethod
    def _known_forms(cls, value: list[str] | None) -> list[str] | None:
        for group in value or []:
            if group not in FORM_GROUPS:
                raise ValueError(f"unknown form group {group!r}; one of {', '.join(FORM_GROUPS)}")
        return value

    @field_validator("routes")
    @classmethod
    def _known_routes(cls, value: list[str] | None) -> list[str] | None:
        for route in value or []:
            if route not in ROUTES:
                raise ValueError(f"unknown route {route!r}; one of {', '.join(ROUTES)}")
        return value

    def is_empty(self) -> bool:
        return not any(getattr(self, name) is not None for name in _CONDITION_FIELDS)


_CONDITION_FIELDS = (
    "age_min", "age_max", "egfr_min", "egfr_max", "weight_min", "weight_max", "daily_min", "daily_max", "days_min",
    "days_max", "sex", "visits", "not_diagnoses", "pregnant", "lactating",
    "hepatic", "diagnoses", "release", "forms", "routes",
)


class Limit(Spec):
    max: float | None = Field(None, gt=0)
    min: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _some_bound(self) -> Limit:
        if self.max is None and self.min is None:
            raise ValueError("a limit needs max or min")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError("min is above max")
        return self


class Regimen(Spec):
    id: str = Field(pattern=r"^[a-z0-9_]+$")
    when: Condition = Field(default_factory=Condition)
    per_dose: Limit | None = None
    per_day: Limit | None = None
    per_dose_per_kg: Limit | None = None
    per_day_per_kg: Limit | None = None
    frequencies: list[str] | None = None
    severity: SeverityName = "warning"
    # A frequency outside the label is a 用法 question, not an overdose: a regimen's severity
    # (critical for paracetamol > 4 g/day) must not leak into it. Default: warning at most.
    frequency_severity: SeverityName | None = None
    message: str | None = None
    source: str = Field(min_length=2)

    @field_validator("frequencies")
    @classmethod
    def _known_frequencies(cls, value: list[str] | None) -> list[str] | None:
        for code in value or []:
            if code not in TIMES_PER_DAY:
                raise ValueError(f"unknown frequency {code!r}; one of {', '.join(TIMES_PER_DAY)}")
        return value


class Selector(Spec):
    drug: str | None = None
    class_: str | None = Field(None, alias="class")
    # Only items that act systemically (oral, injection, rectal, or a form not stated): a topical
    # NSAID gel does not interact with warfarin as an oral NSAID does.
    systemic: bool = False
    # Only when this item's daily dose (the drug's unit) is at least this much; an unknown daily
    # dose counts as reaching it (the conservative reading), and the evidence says so.
    daily_min: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> Selector:
        if (self.drug is None) == (self.class_ is None):
            raise ValueError("a selector names exactly one of drug or class")
        return self

    @property
    def key(self) -> str:
        return self.drug if self.drug is not None else f"class:{self.class_}"



class Indication(Spec):
    codes: list[str] = Field(min_length=1)
    exclude: list[str] = Field(default_factory=list)
    # Also indicated by another drug on the same prescription, whatever the diagnoses: a PPI for
    # gastroprotection with an antiplatelet or an NSAID (专家共识 2016/2020).
    also_by: list[Selector] = Field(default_factory=list)
    severity: SeverityName = "warning"
    message: str = "诊断中无{drug}的适应证"
    source: str = Field(min_length=2)


class Contraindication(Spec):
    id: str = Field(pattern=r"^[a-z0-9_]+$")
    when: Condition
    severity: SeverityName = "critical"
    message: str
    source: str = Field(min_length=2)

    @model_validator(mode="after")
    def _not_empty(self) -> Contraindication:
        if self.when.is_empty():
            raise ValueError("a contraindication needs at least one condition under `when`")
        return self


class Example(Spec):
    name: str
    visit_type: str = "outpatient"
    patient: dict[str, Any] = Field(default_factory=dict)
    diagnoses: list[Any] = Field(default_factory=list)
    items: list[dict[str, Any]] = Field(min_length=1)
    facility: dict[str, Any] | None = None
    department: str | None = None
    expect: list[str] = Field(default_factory=list)


class DrugInfo(Spec):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str = Field(min_length=1)
    names: list[str] = Field(default_factory=list)
    atc: list[str] = Field(default_factory=list)
    classes: list[str] = Field(default_factory=list)
    allergy_classes: list[str] = Field(default_factory=list)
    unit: Literal["mg", "ug", "g", "IU", "mL"] = "mg"
    chronic: bool = False
    forms: dict[str, list[str]] = Field(min_length=1)
    source: str = Field(min_length=2)

    @field_validator("atc", "names", "classes", "allergy_classes", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("forms")
    @classmethod
    def _known_forms_and_routes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return known_forms(value)


class ReviewRecord(Spec):
    """Who confirmed a monograph, when, against which label edition (医疗机构处方审核规范 第十条)."""

    by: str = Field(min_length=1)
    date: dt.date
    against: str = Field(min_length=2)  # the label edition / guideline version read
    notes: str | None = None


class DrugFile(Spec):
    drug: DrugInfo
    review: list[ReviewRecord] = Field(default_factory=list)
    indication: Indication | None = None
    dose: list[Regimen] = Field(default_factory=list)
    contraindications: list[Contraindication] = Field(default_factory=list)
    max_days: float | None = Field(None, gt=0)
    max_days_source: str | None = None
    examples: list[Example] = Field(default_factory=list)


class ClassSpec(Spec):
    name: str
    source: str = ""


class AllergyClassSpec(Spec):
    name: str
    names: list[str] = Field(default_factory=list)
    cross_reactive: dict[str, SeverityName] = Field(default_factory=dict)
    # Whether an allergy written as one member drug (阿莫西林过敏) counts as an allergy to the
    # whole class. True for chemical families (penicillins); false for umbrella groups that span
    # families (β-lactams, sulfonamide-containing drugs): there the link is cross-reactivity, a
    # warning written in `cross_reactive`, never a block.
    propagate: bool = True
    source: str = Field(min_length=2)


class InteractionSpec(Spec):
    id: str = Field(pattern=r"^[a-z0-9_]+$")
    between: list[Selector] = Field(min_length=2, max_length=2)
    severity: SeverityName
    # A pair rule that is a duplicate by its nature (two P2Y12 inhibitors, a penicillin beside a
    # cephalosporin) reports as `duplicate`, whatever section it is written in.
    category: Literal["interaction", "duplicate"] = "interaction"
    message: str
    source: str = Field(min_length=2)
    examples: list[Example] = Field(default_factory=list)


class DuplicateSpec(Spec):
    id: str = Field(pattern=r"^[a-z0-9_]+$")
    class_: str = Field(alias="class")
    systemic: bool = False  # both items systemic (see Selector.systemic)
    severity: SeverityName = "warning"
    message: str = "重复给药：{a}与{b}同属{class_name}"
    source: str = Field(min_length=2)
    examples: list[Example] = Field(default_factory=list)


CUSTOM_ITEM_FIELDS = frozenset({
    "drug", "route", "form_group", "release", "freq", "times_per_day", "dose", "daily", "days", "known",
})
CUSTOM_PRESCRIPTION_FIELDS = frozenset({
    "visit", "age", "sex", "weight", "egfr", "pregnant", "lactating", "hepatic", "facility", "facility_level",
    "department", "prescriber", "item_count", "dx_count",
})


class CustomCondition(Spec):
    field: str
    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in"]
    value: Any

    @model_validator(mode="after")
    def _value_shape(self) -> CustomCondition:
        values = self.value if isinstance(self.value, list) else [self.value]
        for value in values:
            # Only plain scalars reach durable: a mapping such as {"$nex": 1} would be read as an
            # operator (it failed only at load, error 202/204).
            if not isinstance(value, (str, int, float, bool)):
                raise ValueError(f"value must be a string, number or true/false (or a list of them), not {value!r}")
            if isinstance(value, str) and len(value) > 200:
                raise ValueError("a string value is at most 200 characters")
        if isinstance(self.value, list) and len(self.value) > MAX_IN_VALUES:
            raise ValueError(f"at most {MAX_IN_VALUES} values in a list (durable_rules holds ~500 alternatives "
                             "per ruleset); use a drug class or the formulary for longer lists")
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op} needs a list value")
        if self.op in ("lt", "le", "gt", "ge") and not isinstance(self.value, (int, float)):
            raise ValueError(f"op {self.op} needs a number")
        return self


class CustomRule(Spec):
    id: str = Field(pattern=r"^[a-z0-9_]+$")
    category: CategoryName
    severity: SeverityName = "warning"
    scope: Literal["item", "prescription"] = "item"
    when: list[CustomCondition] = Field(min_length=1)
    message: str
    source: str = Field(min_length=2)
    examples: list[Example] = Field(default_factory=list)

    @model_validator(mode="after")
    def _fields_exist(self) -> CustomRule:
        allowed = CUSTOM_PRESCRIPTION_FIELDS | (CUSTOM_ITEM_FIELDS if self.scope == "item" else frozenset())
        for condition in self.when:
            if condition.field not in allowed:
                raise ValueError(f"field {condition.field!r} is not available in scope {self.scope}")
        return self


class ClassRule(Spec):
    """A rule over every drug of some classes (or regulatory control), written once: population
    contraindications by class, 长期处方 exclusions. ``applies_to: no_monograph`` (default) leaves
    drugs with a monograph to their own rules; ``all`` reaches every drug."""

    id: str = Field(pattern=r"^[a-z0-9_]+$")
    classes: list[str] = Field(default_factory=list)  # any of these classes …
    control: list[Literal["narcotic", "psychotropic_1", "psychotropic_2", "toxic", "radioactive", "precursor"]] = (
        Field(default_factory=list))  # … or any of these control classes
    except_classes: list[str] = Field(default_factory=list)
    systemic: bool = False  # only items that act systemically (not eye drops, creams, inhalers)
    when: Condition = Field(default_factory=Condition)
    applies_to: Literal["no_monograph", "all"] = "no_monograph"
    category: CategoryName
    severity: SeverityName
    message: str
    source: str = Field(min_length=2)
    examples: list[Example] = Field(default_factory=list)

    @model_validator(mode="after")
    def _selects_something(self) -> ClassRule:
        if not self.classes and not self.control:
            raise ValueError("a class rule names classes or control")
        return self


class Privileges(Spec):
    """Who may prescribe what (category legality): antibacterial tier by title, 麻醉/精一 rights."""

    antibacterial_tier_by_title: dict[
        Literal["village_doctor", "resident", "attending", "associate_chief", "chief"],
        Literal["unrestricted", "restricted", "special"],
    ] = Field(default_factory=dict)
    antibacterial_severity: SeverityName = "warning"
    controlled_severity: SeverityName = "critical"
    source: str = Field(min_length=2)


class QuantityCheck(Spec):
    """The amount dispensed against the days written and the limits by visit (处方管理办法 第十九条)."""

    tolerance_days: float = Field(3, ge=0)  # pack rounding: 90 tablets of 24 a box
    tolerance_ratio: float = Field(1.25, ge=1)
    source: str = Field(min_length=2)


class AtcDuplicates(Spec):
    """Two different products of one ATC level-4 group on one prescription (同类药物重复使用), for
    every drug of the dictionary; groups a combination is the norm in are exempted by prefix."""

    severity: SeverityName = "warning"
    except_groups: list[str] = Field(default_factory=list)  # ATC prefixes: "B05", "B01AC", …
    # Level-4 groups whose code ends in X ("other …": N03AX holds lamotrigine and levetiracetam,
    # given together on purpose) gather unlike drugs.
    except_other: bool = True
    # A once-only or as-needed order beside a regular one (硝酸甘油 prn beside 单硝酸异山梨酯 qd).
    skip_frequencies: list[str] = Field(default_factory=lambda: ["st", "prn"])
    source: str = Field(min_length=2)


class Vehicles(Spec):
    """Infusion vehicles (溶媒): written once per infusion group, so two of them on one order are
    two bottles, not a duplicate."""

    drugs: list[str] = Field(default_factory=list)
    source: str = Field(min_length=2)


class DurationLimit(Spec):
    max_days: float = Field(gt=0)
    chronic_drug_max_days: float | None = Field(None, gt=0)
    severity: SeverityName = "warning"
    source: str = Field(min_length=2)


class Settings(Spec):
    flag_threshold: SeverityName = "warning"
    duration: dict[Literal["outpatient", "emergency", "inpatient", "chronic"], DurationLimit] = Field(
        default_factory=dict
    )
    form_aliases: dict[str, str] = Field(default_factory=dict)
    route_aliases: dict[str, str] = Field(default_factory=dict)
    missing_allergy_info: bool = True
    # CONTRACT §1: a drug the rulebook cannot resolve is reviewed by hand (医疗机构处方审核规范):
    # warning by default, so it is held; a hospital may lower it to info.
    privileges: Privileges | None = None
    quantity: QuantityCheck | None = None
    atc_duplicates: AtcDuplicates | None = None
    vehicles: Vehicles | None = None
    unknown_drug_severity: SeverityName = "warning"
    unknown_drug_severity_by_facility: dict[str, SeverityName] = Field(default_factory=dict)
    # A dictionary drug without a monograph: its dose and indication were not checked.
    no_monograph_severity: SeverityName = "info"
    # A drug outside the facility's imported formulary (rules/formularies/): reviewed by hand.
    formulary_severity: SeverityName = "warning"
    # An allergen the rulebook cannot read (not a drug, class or known food/environment allergen):
    # said, so the pharmacist checks it by hand; info by default, since most such text names
    # something unrelated to the prescription.
    unreadable_allergy_severity: SeverityName = "info"


