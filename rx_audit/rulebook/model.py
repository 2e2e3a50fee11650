"""The compiled rulebook: rules with what explains them, drugs, examples, and the views the engine reads.
"""

from __future__ import annotations

import string
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

from rx_audit.rulebook.conditions import branches
from rx_audit.rulebook.names import normalise_name, resolve_name
from rx_audit.rulebook.schema import AtcDuplicates, CategoryName, Settings, SeverityName


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
        self.placeholders = _placeholders(self.message)

    @property
    def paths(self) -> int:
        """How many rule paths durable_rules makes of the condition (computed once: the loader asks
        three times, for 76,153 rules in the generated 2,000-drug rulebook)."""
        # Keyed by the condition object: the compiler sets a rule's condition after creating it.
        cached = self.__dict__.get("_paths")
        if cached is None or cached[0] is not self.condition:
            cached = self.__dict__["_paths"] = (self.condition, branches(self.condition))
        return int(cached[1])


def atc_group_compared(code: str, policy: AtcDuplicates) -> bool:
    """Whether an ATC code's level-4 group takes part in the duplicate rule."""
    code = code.strip().upper()
    if len(code) < 5 or not code[:5].isalnum():
        return False
    if policy.except_other and code[4] == "X":
        return False
    return not any(code.startswith(prefix.strip().upper()) for prefix in policy.except_groups)


@lru_cache(maxsize=4096)
def _placeholders(message: str) -> frozenset[str]:
    # Generated messages repeat (the same dose wording for every regimen of every drug).
    try:
        return frozenset(name for _, name, _, _ in string.Formatter().parse(message) if name)
    except ValueError:
        return frozenset()


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
    # From the drug dictionary: a drug without a monograph is still audited by every class rule.
    monograph: bool = True
    kind: str = "chemical"  # chemical | biological | tcm | fluid | supply
    ingredients: tuple[str, ...] = ()  # active ingredients by id (a single-ingredient drug: itself)
    antibacterial_tier: str | None = None
    control: tuple[str, ...] = ()
    high_alert: bool = False
    essential: bool = False
    # Classes the dictionary gives a monograph drug besides its own: class rules (population, 长期处方)
    # read them; interactions and duplicates keep to the monograph's classes, which a reviewer chose.
    dictionary_classes: tuple[str, ...] = ()


@dataclass
class Formulary:
    """A facility's formulary: the drugs it may dispense and its HIS codes (rx_audit.rulebook.formulary)."""

    facility: str
    ids: frozenset[str]
    codes: dict[str, str] = field(default_factory=dict)  # HIS code -> drug id
    where: str = ""


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
    formularies: dict[str, Formulary] = field(default_factory=dict)  # facility id -> its formulary
    # logical ruleset ("drug:…", "pair:…") -> the shared ruleset its rules were packed into
    packed: dict[str, str] = field(default_factory=dict)

    pair_keys: dict[str, list[str]] = field(default_factory=dict)  # drug id -> [id, "class:…"]
    _lookups: dict[tuple[str, str | None], Drug | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.pair_keys = {d.id: [d.id, *(f"class:{c}" for c in d.classes)] for d in self.drugs.values()}
        # Not duplicates when written twice: infusion vehicles (settings) and supplies (not drugs).
        vehicles = self.settings.vehicles.drugs if self.settings.vehicles is not None else []
        self.not_duplicated = frozenset([*vehicles, *(d.id for d in self.drugs.values() if d.kind == "supply")])
        # drug id -> its ATC level-4 groups the duplicate rule compares (exempt groups left out)
        self.atc_groups: dict[str, tuple[str, ...]] = {}
        policy = self.settings.atc_duplicates
        if policy is not None:
            for drug in self.drugs.values():
                groups = tuple(dict.fromkeys(code[:5] for code in drug.atc if atc_group_compared(code, policy)))
                if groups:
                    self.atc_groups[drug.id] = groups
        # drug id -> the facilities whose formulary lists it (what an item's fact carries)
        self.in_formularies: dict[str, list[str]] = {}
        for formulary in self.formularies.values():
            for drug_id in formulary.ids:
                self.in_formularies.setdefault(drug_id, []).append(formulary.facility)

    def drug_for_code(self, facility: str | None, code: str | None) -> Drug | None:
        """The drug an HIS drug code means in the facility's imported formulary, or ``None``."""
        formulary = self.formularies.get(facility or "")
        drug_id = formulary.codes.get(code) if formulary is not None and code else None
        return self.drugs.get(drug_id) if drug_id else None

    def drug_for(self, text: str, atc: str | None = None) -> Drug | None:
        """The drug an HIS name (Chinese, English, synonym) or ATC code means; ``None`` if unknown."""
        key = (text, atc)
        if key in self._lookups:
            return self._lookups[key]
        # The name as written first, then without its decoration (brand, strength, salt, form),
        # then the ATC code; a name that matches nothing is unknown, never a guess.
        drug_id = resolve_name(text, self.names, lambda found: len(self.drugs[found].ingredients) > 1)
        if drug_id is None and atc:
            drug_id = self.names.get(normalise_name(atc))
        drug = self.drugs.get(drug_id) if drug_id else None
        if len(self._lookups) < 100_000:  # bounded: free-text names from a large replay
            self._lookups[key] = drug
        return drug

    def rules_by_id(self) -> dict[str, CompiledRule]:
        return {rule.id: rule for rule in self.rules.values()}

    def ruleset_for(self, logical: str) -> str:
        """The ruleset a fact meant for ``logical`` ("drug:metformin", "pair:class:statin") goes to."""
        return self.packed.get(logical, logical)

    def fields_read(self) -> dict[str, frozenset[str]]:
        """Per logical ruleset, the fact fields its rules compare or show: all a fact needs to carry."""
        return self._reads[0]

    def list_vocabulary(self, list_field: str) -> dict[str, frozenset[str] | None]:
        """Per logical ruleset, the values its rules look for in a list field (``dx``, ``allergies``).

        A fact need carry no other values: they cannot change any test of that ruleset, and
        durable_rules' cost grows with every list entry it walks. ``None``: a rule compares the
        list with a field of the fact, so every value may matter.
        """
        fields, vocabulary = self._reads
        found = vocabulary.get(list_field, {})
        return {logical: found.get(logical, frozenset()) for logical in fields}

    @cached_property
    def _reads(self) -> tuple[dict[str, frozenset[str]], dict[str, dict[str, frozenset[str] | None]]]:
        """One walk over every condition for both of the above (computed once per rulebook).

        Measured on the generated 2,000-drug rulebook: one walk per list field and another for the
        fields were 3.6 of the 7.4 s durable's registration took under a profiler."""
        fields: dict[str, set[str]] = defaultdict(lambda: set(_ALWAYS_CARRIED))
        values: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for name, rule_names in self.rulesets.items():
            logical = name.split("#", 1)[0]
            read, lists = fields[logical], values[logical]
            for rule_name in rule_names:
                rule = self.rules[rule_name]
                _walk(rule.condition, read, lists)
                read.update(rule.evidence_fields)
        vocabulary: dict[str, dict[str, frozenset[str] | None]] = defaultdict(dict)
        for logical, lists in values.items():
            for list_field, found in lists.items():
                # Compared with a field of the fact: every value may matter.
                vocabulary[list_field][logical] = None if _DYNAMIC in found else frozenset(found)
        return {name: frozenset(value) for name, value in fields.items()}, dict(vocabulary)

    def ruleset_definitions(self) -> dict[str, dict[str, Any]]:
        """The JSON definitions handed to durable_rules, one per (sharded) ruleset."""
        return {
            name: {rule_name: {"all": [{"m": self.rules[rule_name].condition}]} for rule_name in rule_names}
            for name, rule_names in self.rulesets.items()
        }


# Identity of a fact: never dropped, so two equal items of one prescription stay two facts.
_ALWAYS_CARRIED = ("t", "n", "item", "a_item", "b_item", "drug", "a_drug", "b_drug")


_DYNAMIC = "\0dynamic"


def _item_values(test: Any) -> set[str]:
    if isinstance(test, list):
        return {v for part in test for v in _item_values(part)}
    if isinstance(test, dict):
        if "$i" in test and isinstance(test["$i"], str):
            return {test["$i"]}
        if "$i" in test and isinstance(test["$i"], dict) and "$m" in test["$i"]:
            return {_DYNAMIC}
        return {v for value in test.values() for v in _item_values(value)}
    return set()


def _walk(condition: Any, read: set[str], lists: dict[str, set[str]]) -> None:
    """Add the fact fields a durable_rules condition reads to ``read``, and the ``$i`` values its
    list tests compare each list field's items with to ``lists[field]``."""
    if isinstance(condition, list):
        for part in condition:
            _walk(part, read, lists)
        return
    if not isinstance(condition, dict):
        return
    for key, value in condition.items():
        if key in ("$and", "$or"):
            _walk(value, read, lists)
        elif key in ("$iany", "$iall") and isinstance(value, dict):
            for list_field, test in value.items():
                if not list_field.startswith("$"):
                    read.add(list_field)
                    lists[list_field].update(_item_values(test))
        elif key.startswith("$"):
            if isinstance(value, dict):
                read.update(name for name in value if not name.startswith("$"))
        else:
            read.add(key)
