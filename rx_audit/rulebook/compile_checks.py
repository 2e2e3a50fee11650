"""Regimens, contraindications and routes as data: one small set of generic durable rules compares
every drug's limits, which travel in the facts.

Why (measured, issue 11): durable_rules allocates 7–14 KB for every rule it holds, so a rulebook
written as one rule per limit per drug grew with the formulary — the generated 2,000-monograph
rulebook had 74,416 rules, 1.1 GB inside durable and 4 s to register. Here a monograph's dose
regimen, contraindication or route check compiles to a :class:`Check`: its gate (who it applies
to) and its limits as *data*, and the rule ids, messages and ``file:line`` of each as ordinary
:class:`CompiledRule` objects the engine never registers. At audit time an item's fact is written
once per check of its drug, carrying that check's data; the generic rules of :data:`CHECK_RULESET`
— about thirty, whatever the size of the formulary — compare the item with it in durable_rules,
and a fired generic rule names, through a field of the fact (:attr:`CompiledRule.data_key`), the
data rule whose finding it is.

The gate is *normalised* so that one generic rule tests every shape of gate without an ``$or``
per field (durable has no "this bound, if the regimen has one"): every gate field is always
present. A bounded numeric field carries the patient's value in ``q_<field>`` and its bounds in
``lo_<field>``/``hi_<field>``; an unbounded one carries ``q = 0`` between ±10¹⁴. A bounded
categorical field carries the patient's value in ``q_<gate>`` and the allowed values in
``ok_<gate>``; an unbounded one ``"*"`` in both. A bounded field the patient lacks stays absent,
so its tests fail and the field's missing-data twin (``w_<field>``) fires instead — the same
findings the per-drug rules gave (``tests/reference.py`` checks both ways).

Diagnoses are a list on both sides, which durable cannot compare within one fact; so the patient's
diagnosis tokens that some check names travel in slots (``x0``…``x31``, padded), compared with the
check's codes by the ``_dx`` variants of the generic rules and by the indication rule. More
relevant tokens than slots gives a "not checked" finding for the drug, never a silent pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rx_audit.normalise import normalise_icd
from rx_audit.rulebook.conditions import FIELD_LABELS_ZH, TWIN_FIELDS, all_of, cmp, eq
from rx_audit.rulebook.model import Check, CompiledRule
from rx_audit.rulebook.schema import Condition

CHECK_RULESET = "checks"
# Beyond any dose, age or eGFR, inside durable's integers (and written without an exponent).
_OPEN = 10**14
_NUMERIC = ("age", "egfr", "weight", "daily", "days")
# gate name -> (the fact field it compares, the twin field that stands for its absence)
_CATEGORICAL: dict[str, tuple[str, str | None]] = {
    "sex": ("sex", None),
    "pregnant": ("pregnant", "pregnant"),
    "lactating": ("lactating", "lactating"),
    "hepatic": ("hepatic", "hepatic"),
    "release": ("release", "form_group"),
    "forms": ("form_group", "form_group"),
    "routes": ("route", "route"),
    "visits": ("visit", None),
}
# test name -> (fact field compared, operator, fields it needs); "above the maximum" is $gt.
VALUE_TESTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    f"{key}_{bound}": (fact_field, op, needs)
    for key, fact_field, needs in (
        ("per_dose", "dose", ("dose",)),
        ("per_day", "daily", ("daily",)),
        ("per_dose_per_kg", "dose_per_kg", ("dose", "weight")),
        ("per_day_per_kg", "daily_per_kg", ("daily", "weight")),
    )
    for bound, op in (("max", "$gt"), ("min", "$lt"))
}
# test name -> the fact field whose value must be one of the check's list (a_<test>)
LIST_TESTS = {"freq": "freq", "form": "form_group", "route": "route"}
# An indication's test compares the item's diagnoses with the drug's codes, both lists: the
# patient's side travels in slots (x0…, c0…), the diagnosis codes (and other items' keys) that
# some indication names, padded with a value no code has. A prescription with more than fits is
# not guessed at: it gets the overflow finding (measured: 31 codes per indication on average, a
# prescription 2–12 relevant tokens).
DX_SLOTS = 32
CO_SLOTS = 8
# A slot without a value, and an indication no other item indicates: never a code, nor each other.
SLOT_PAD = "~"
NO_KEY = "-"
# In a gate that names no diagnoses: always among the slots' values (x_any).
ANY_TOKEN = "*"
# Fields of the patient and item every check fact carries: what the generic rules and twins test,
# and what a finding shows (evidence and message placeholders).
PATIENT_FIELDS = ("t", "n", "item", "drug", "drug_text", "dose", "daily", "dose_per_kg", "daily_per_kg", "freq",
                  "route", "form_group", "form", "release", "weight", "egfr", "pregnant", "lactating", "hepatic",
                  "days", "sex", "age", "visit", "dx_count")


@dataclass
class CheckBuilder:
    """Collects the tests of one check; :meth:`build` registers its data rules and twins."""

    drug: str
    condition: Condition | None
    female: bool = False  # pregnancy and lactation apply to women only
    only_forms: list[str] | None = None  # a route check of one form group
    static: dict[str, Any] = field(default_factory=dict)
    needs: dict[str, list[str]] = field(default_factory=dict)  # twin field -> rule ids needing it
    needs_dose: dict[str, bool] = field(default_factory=dict)  # rule id -> whether it needs the dose
    sources: dict[str, str] = field(default_factory=dict)  # rule id -> file:line (a twin's source)

    def gate(self) -> tuple[dict[str, Any], list[tuple[str, str]], list[str]]:
        """The gate's static fields, the (q field, patient field) pairs copied per fact, twin fields."""
        static: dict[str, Any] = {}
        bounded: list[tuple[str, str]] = []
        twins: list[str] = []
        condition = self.condition or Condition()
        for name in _NUMERIC:
            low, high = getattr(condition, f"{name}_min"), getattr(condition, f"{name}_max")
            static[f"lo_{name}"] = -_OPEN if low is None else low
            static[f"hi_{name}"] = _OPEN if high is None else high
            if low is None and high is None:
                static[f"q_{name}"] = 0
            else:
                bounded.append((f"q_{name}", name))
                if name in TWIN_FIELDS:
                    twins.append(name)
        allowed = self._allowed(condition)
        for gate, (fact_field, twin) in _CATEGORICAL.items():
            values = allowed.get(gate)
            if values is None:
                static[f"q_{gate}"] = "*"
                static[f"ok_{gate}"] = ["*"]
            else:
                static[f"ok_{gate}"] = values
                bounded.append((f"q_{gate}", fact_field))
                if twin is not None and twin not in twins:
                    twins.append(twin)
        return static, bounded, twins

    def _allowed(self, condition: Condition) -> dict[str, list[Any]]:
        allowed: dict[str, list[Any]] = {}
        if condition.sex is not None:
            allowed["sex"] = [condition.sex]
        if self.female:
            # Both a sex bound and a pregnancy bound: the values both allow (none if they disagree).
            allowed["sex"] = [sex for sex in allowed.get("sex", ["F"]) if sex == "F"] or ["\0none"]
        for flag in ("pregnant", "lactating"):
            value = getattr(condition, flag)
            if value is not None:
                allowed[flag] = [1 if value else 0]
        for gate in ("hepatic", "release", "forms", "routes", "visits"):
            values = getattr(condition, gate)
            if values:
                allowed[gate] = list(values)
        if self.only_forms is not None:
            allowed["forms"] = list(self.only_forms)
        return allowed

    def add(self, compiler: Any, test: str, rule: CompiledRule, *, limit: Any = None,
            values: list[str] | None = None) -> None:
        """One test of the check: a value test (limit), a list test (values) or ``contra``."""
        name = compiler.add_data(rule)
        self.static[f"r_{test}"] = name
        if test in VALUE_TESTS:
            self.static[f"l_{test}"] = limit
            needs = VALUE_TESTS[test][2]
        elif test in LIST_TESTS:
            self.static[f"a_{test}"] = list(values or [])
            needs = (LIST_TESTS[test],)
        else:
            needs = ()
        for need in needs:
            self.needs.setdefault(need, []).append(rule.id)
        self.needs_dose[rule.id] = "dose" in needs
        self.sources[rule.id] = rule.source

    def build(self, compiler: Any, checks: dict[str, list[Check]]) -> None:
        """Register the check's missing-data twins and append it to its drug's checks."""
        if not self.sources:
            return
        static, bounded, gate_twins = self.gate()
        static.update(self.static)
        condition = self.condition or Condition()
        if condition.diagnoses or condition.not_diagnoses:
            # Diagnoses in the gate: the patient's tokens travel in slots, and the check's rules are
            # the generic rules' "_dx" twins, which also compare them (the others never read slots).
            static["g_dx"] = [normalise_icd(code) for code in condition.diagnoses or ()] or [ANY_TOKEN]
            static["g_ndx"] = [normalise_icd(code) for code in condition.not_diagnoses or ()] or [NO_KEY]
            static["overflow"] = overflow_rule(compiler, self.drug, self.sources[next(iter(self.sources))])
            suffix = "_dx"
        else:
            suffix = ""
        ids = list(self.sources)
        for missing in dict.fromkeys([*gate_twins, *self.needs]):
            if missing not in TWIN_FIELDS:
                continue
            # Every test needs a gate field; a value field only the tests that read it.
            covered = ids if missing in gate_twins else self.needs[missing]
            groups: dict[str, list[str]] = {}
            for rule_id in covered:
                # A missing daily dose is reported once, as the dose, where the rule also needs it.
                key = "w_daily_d" if missing == "daily" and self.needs_dose[rule_id] else f"w_{missing}"
                groups.setdefault(key, []).append(rule_id)
            for key, rule_ids in groups.items():
                twin = CompiledRule(
                    id=f"{self.drug}.missing.{missing}", category="completeness", severity="info",
                    message=f"缺少{FIELD_LABELS_ZH.get(missing, missing)}，无法执行：{{rules}}",
                    source=self.sources[rule_ids[0]], condition={}, drug=self.drug, missing_field=missing,
                    covers=tuple(rule_ids),
                )
                static[key] = compiler.add_data(twin)
        if suffix:
            static = {f"{key}{suffix}" if key.startswith(("r_", "w_")) else key: value for key, value in static.items()}
        checks.setdefault(self.drug, []).append(Check(static=static, bounded=tuple(bounded)))


def overflow_rule(compiler: Any, drug: str, source: str) -> str:
    """The drug's finding for a prescription whose diagnoses do not fit the slots (one per drug)."""
    name = compiler.overflows.get(drug)
    if name is None:
        name = compiler.overflows[drug] = compiler.add_data(CompiledRule(
            id=f"{drug}.diagnoses_unchecked", category="completeness", severity="warning",
            message=f"相关诊断编码超过{DX_SLOTS}个或合用药超过{CO_SLOTS}种，未能自动审核{{drug}}的适应证与"
            "诊断相关禁忌，请药师人工审核",
            source=source, condition={}, evidence_fields=("dx",), drug=drug,
            reference="rx_audit: 未能完整审核的部分由药师人工审核",
        ))
    return name


def indication_check(compiler: Any, drug: str, rule: CompiledRule, codes: list[str], by: list[str],
                     checks: dict[str, list[Check]]) -> None:
    """A drug's indication as data (the patient's side is filled in per fact: facts._check_facts)."""
    static = {"r_indication": compiler.add_data(rule), "i_codes": list(codes), "i_by": list(by) or [NO_KEY],
              "overflow": overflow_rule(compiler, drug, rule.source)}
    checks.setdefault(drug, []).append(Check(static=static, bounded=()))


def _gate_tests(without: str | None = None) -> list[dict[str, Any]]:
    """Every gate field's tests, those standing for the field ``without`` left out."""
    tests: list[dict[str, Any]] = []
    for name in _NUMERIC:
        if name == without:
            continue
        tests.append({"$gte": {f"q_{name}": {"$m": f"lo_{name}"}}})
        tests.append({"$lt": {f"q_{name}": {"$m": f"hi_{name}"}}})
    for gate, (_, twin) in _CATEGORICAL.items():
        if twin is not None and twin == without:
            continue
        tests.append({"$iany": {f"ok_{gate}": {"$i": {"$m": f"q_{gate}"}}}})
    return tests


def generic_rules() -> list[CompiledRule]:
    """The rules of :data:`CHECK_RULESET`: one per test and one per missing field, for every drug."""
    rules: list[CompiledRule] = []

    def generic(name: str, key: str, *tests: dict[str, Any]) -> None:
        rules.append(CompiledRule(
            id=f"check.{name}", category="completeness", severity="info", message="",
            source="rx_audit/rulebook/compile_checks.py", condition=all_of({"$ex": {key: 1}}, *tests), data_key=key,
            reference="rx_audit 通用比较规则：限值来自各药品专论，findings 给出所据规则的 file:line 与出处",
        ))

    dx: list[dict[str, Any]] = [
        {"$iany": {"g_dx": {"$or": [{"$i": {"$m": f"x{k}"}} for k in range(DX_SLOTS)] + [{"$i": ANY_TOKEN}]}}},
        {"$iall": {"g_ndx": {"$and": [{"$neq": {"$i": {"$m": f"x{k}"}}} for k in range(DX_SLOTS)]}}},
    ]
    plain: list[dict[str, Any]] = []
    for suffix, extra_gate in (("", plain), ("_dx", dx)):
        gate = [*_gate_tests(), *extra_gate]
        for test, (fact_field, op, _) in VALUE_TESTS.items():
            generic(f"{test}{suffix}", f"r_{test}{suffix}", {op: {fact_field: {"$m": f"l_{test}"}}}, *gate)
        for test, fact_field in LIST_TESTS.items():
            generic(f"{test}{suffix}", f"r_{test}{suffix}",
                    {"$iall": {f"a_{test}": {"$neq": {"$i": {"$m": fact_field}}}}}, *gate)
        generic(f"contra{suffix}", f"r_contra{suffix}", *gate)
        for missing in TWIN_FIELDS:
            extra: list[dict[str, Any]] = []
            if missing in ("pregnant", "lactating"):
                # Only a woman of child-bearing age lacks an answer that matters.
                extra = [eq("sex", "F"), cmp("$gte", "age", 12), cmp("$lt", "age", 55)]
            without = [*_gate_tests(missing), *extra_gate]
            generic(f"missing.{missing}{suffix}", f"w_{missing}{suffix}", {"$nex": {missing: 1}}, *extra, *without)
            if missing == "daily":
                generic(f"missing.daily_d{suffix}", f"w_daily_d{suffix}", {"$nex": {missing: 1}}, {"$ex": {"dose": 1}},
                        *without)
    # Indication: no diagnosis token is one of the codes, and no other item indicates the drug.
    generic("indication", "r_indication", cmp("$gt", "dx_count", 0),
            {"$iall": {"i_codes": {"$and": [{"$neq": {"$i": {"$m": f"x{k}"}}} for k in range(DX_SLOTS)]}}},
            {"$iall": {"i_by": {"$and": [{"$neq": {"$i": {"$m": f"c{k}"}}} for k in range(CO_SLOTS)]}}})
    generic("diagnoses_unchecked", "r_overflow")
    return rules
