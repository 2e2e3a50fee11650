"""Class rules: what every drug of the dictionary is audited for, monograph or not — written once.

Knowledge as data: a dictionary drug's allergy classes and ingredients travel in its facts, and a
bounded set of generic durable_rules rules compares them (durable reads a field of the same fact
with ``{"$m": field}``), so the number of rules does not grow with the formulary:

* allergy to the drug itself, to each allergy class, and cross-reactivity between classes, for
  drugs without a monograph (a monograph compiles its own, with its own sources);
* the same active ingredient in two different products (复方氨酚烷胺 + 对乙酰氨基酚);
* two products of one ATC level-4 group (两种质子泵抑制剂, 两种二氢吡啶类钙拮抗剂), settings
  ``atc_duplicates`` saying which groups are exempt.
"""

from __future__ import annotations

from pathlib import Path

from rx_audit.rulebook.compiler import ITEM_PLACEHOLDERS, Compiler
from rx_audit.rulebook.conditions import all_of, eq, gate_of, list_lacks
from rx_audit.rulebook.model import CompiledRule
from rx_audit.rulebook.schema import AllergyClassSpec, AtcDuplicates, ClassRule

CLASS_RULESET = "classes"
INGREDIENT_KEY = "ing"
ATC_KEY = "atc"


def _has(field_name: str, value: object) -> dict[str, object]:
    return {"$iany": {field_name: {"$i": value}}}


def compile_class_rules(
    compiler: Compiler, allergy_specs: dict[str, AllergyClassSpec], allergy_path: dict[str, Path],
    rulebook_source: str,
) -> None:
    no_monograph = [eq("t", "item"), eq("monograph", 0)]
    compiler.add(
        CLASS_RULESET,
        CompiledRule(
            id="allergy.drug", category="contraindication", severity="critical",
            message="患者对{allergy}过敏：{drug}禁用", source=rulebook_source,
            condition=all_of(*no_monograph, _has("allergies", {"$m": "drug"})),
            evidence_fields=("allergies",), limits={"allergy_keys": ["$drug"]},
            reference="医疗机构处方审核规范（2018）第十五条：对已知过敏药物禁用", scope="item",
        ),
    )
    for class_id, spec in allergy_specs.items():
        source = compiler.where(allergy_path[class_id], spec.line)
        compiler.add(
            CLASS_RULESET,
            CompiledRule(
                id=f"allergy.class.{class_id}", category="contraindication", severity="critical",
                message=f"患者对{{allergy}}过敏：{{drug}}属{spec.name}，禁用", source=source,
                condition=all_of(*no_monograph, _has("akeys", class_id), _has("allergies", class_id)),
                evidence_fields=("allergies",), limits={"allergy_keys": [class_id]}, reference=spec.source,
                scope="item",
            ),
        )
        for other, severity in spec.cross_reactive.items():
            compiler.add(
                CLASS_RULESET,
                CompiledRule(
                    id=f"allergy.cross.{class_id}.{other}", category="contraindication", severity=severity,
                    message=f"患者对{{allergy}}过敏，与{spec.name}可能交叉过敏：慎用{{drug}}",
                    source=compiler.where(allergy_path[class_id], spec.line_of("cross_reactive")),
                    condition=all_of(*no_monograph, _has("akeys", class_id), _has("allergies", other)),
                    evidence_fields=("allergies",), limits={"allergy_keys": [other]}, reference=spec.source,
                    scope="item",
                ),
            )
    # Route within the form: the dictionary lists each form group's routes, the fact carries the
    # routes of the item's own group (only when the dictionary lists that group — its forms are not
    # exhaustive, so an unlisted form is not called wrong).
    compiler.add(
        CLASS_RULESET,
        CompiledRule(
            id="route.dictionary", category="route", severity="warning",
            message="{drug}（{form}）不宜{route}给药，请核对剂型与给药途径", source=rulebook_source,
            condition=all_of(*no_monograph, {"$iall": {"routes_ok": {"$neq": {"$i": {"$m": "route"}}}}}),
            evidence_fields=("route", "form", "form_group", "routes_ok"),
            reference="药品说明书【用法用量】给药途径; 医疗机构处方审核规范（2018）第十五条：剂型与给药途径是否适宜",
            scope="item",
        ),
    )
    compiler.add(
        f"pair:{INGREDIENT_KEY}",
        CompiledRule(
            id="duplicate.ingredient", category="duplicate", severity="warning",
            message="{a}与{b}含有相同成分（{ingredient}），重复给药", source=rulebook_source,
            condition=all_of(eq("t", "pair"), eq("key", INGREDIENT_KEY), _has("b_ings", {"$m": "ing"})),
            evidence_fields=("a_drug", "b_drug", "ing"),
            reference="医疗机构处方审核规范（2018）第十五条：是否有重复给药（含复方制剂中的相同成分）", scope="pair",
        ),
    )


def compile_atc_duplicates(compiler: Compiler, policy: AtcDuplicates | None, source: str) -> None:
    if policy is None:
        return
    compiler.add(
        f"pair:{ATC_KEY}",
        CompiledRule(
            id="duplicate.atc", category="duplicate", severity=policy.severity,
            message="{a}与{b}同属一类药物（ATC {atc}），同类药物重复使用", source=source,
            condition=all_of(eq("t", "pair"), eq("key", ATC_KEY), _has("b_atcs", {"$m": "atc"})),
            evidence_fields=("a_drug", "b_drug", "atc"), reference=policy.source, scope="pair",
        ),
    )


def compile_population_rules(compiler: Compiler, rules: list[tuple[Path, ClassRule]], classes: set[str]) -> None:
    """Rules over classes (`class_rules:`): a gate on the patient and the item like a monograph's
    contraindication (with its missing-data twins), plus "the drug is in one of these classes"."""
    for path, rule in rules:
        for name in [*rule.classes, *rule.except_classes]:
            if name not in classes:
                compiler.error(f"class rule {rule.id}: unknown class {name!r}", path, rule.line)
        compiler.check_message(rule.message, ITEM_PLACEHOLDERS, path, rule.line)
        keys = [*rule.classes, *(f"control:{name}" for name in rule.control)]
        gate = gate_of(rule.when)
        selects = [eq("t", "item"), {"$or": [_has("ckeys", key) for key in keys]} if len(keys) > 1
                   else _has("ckeys", keys[0])]
        if rule.except_classes:
            selects.append(list_lacks("ckeys", rule.except_classes))
        if rule.applies_to == "no_monograph":
            selects.append(eq("monograph", 0))
        if rule.systemic:
            selects.append(eq("sys", 1))
        if rule.when.pregnant or rule.when.lactating:
            gate.add("sex", eq("sex", "F"))
        gate.tests = {"drug": selects, **gate.tests}
        compiler.add_with_twins(
            CLASS_RULESET,
            CompiledRule(
                id=f"class.{rule.id}", category=rule.category, severity=rule.severity, message=rule.message,
                source=compiler.where(path, rule.line), condition={},
                evidence_fields=tuple(name for name in gate.fields() if name != "drug"),
                reference=rule.source, drug=f"class.{rule.id}", scope="item",
            ),
            gate,
            {},
        )
