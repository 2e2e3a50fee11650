"""Class rules: what every drug of the dictionary is audited for, monograph or not — written once.

Knowledge as data: a dictionary drug's allergy classes and ingredients travel in its facts, and a
bounded set of generic durable_rules rules compares them (durable reads a field of the same fact
with ``{"$m": field}``), so the number of rules does not grow with the formulary:

* allergy to the drug itself, to each allergy class, and cross-reactivity between classes, for
  drugs without a monograph (a monograph compiles its own, with its own sources);
* the same active ingredient in two different products (复方氨酚烷胺 + 对乙酰氨基酚).
"""

from __future__ import annotations

from pathlib import Path

from rx_audit.rulebook.compiler import Compiler
from rx_audit.rulebook.conditions import all_of, eq
from rx_audit.rulebook.model import CompiledRule
from rx_audit.rulebook.schema import AllergyClassSpec

CLASS_RULESET = "classes"
INGREDIENT_KEY = "ing"


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
