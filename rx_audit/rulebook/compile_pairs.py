"""Rules over two items: interactions (相互作用) and duplicate classes (重复给药).

A pair rule lives in the ruleset of its first selector's key (a drug id or ``class:…``); the
engine writes one pair fact per orientation and per key of the first drug that some rule pairs
with a key of the second, so a fact only meets the rules that could match it. ``{a}`` in a
message is always the drug that matched the first selector.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from rx_audit.rulebook.compiler import PAIR_PLACEHOLDERS, Compiler
from rx_audit.rulebook.conditions import all_of, eq, list_has, selector_evidence, selector_tests
from rx_audit.rulebook.model import CompiledRule, Drug
from rx_audit.rulebook.schema import ClassSpec, DuplicateSpec, InteractionSpec, Selector


def compile_pairs(
    compiler: Compiler,
    interactions: list[tuple[Path, InteractionSpec]],
    duplicates: list[tuple[Path, DuplicateSpec]],
    drugs: dict[str, Drug],
    classes: dict[str, ClassSpec],
) -> dict[str, set[str]]:
    """Compile every interaction and duplicate group; return first key -> the second keys paired with it."""

    def known(selector: Selector, path: Path) -> bool:
        if selector.drug is not None and selector.drug not in drugs:
            compiler.error(f"unknown drug {selector.drug!r}", path, selector.line)
            return False
        if selector.class_ is not None and selector.class_ not in classes:
            compiler.error(f"unknown class {selector.class_!r}", path, selector.line)
            return False
        return True

    def label(selector: Selector) -> str:
        return drugs[selector.drug].name if selector.drug is not None else classes[selector.class_ or ""].name

    partners: dict[str, set[str]] = defaultdict(set)
    for path, spec in interactions:
        first, second = spec.between
        if not (known(first, path) and known(second, path)):
            continue
        partners[first.key].add(second.key)
        compiler.check_message(spec.message, PAIR_PLACEHOLDERS, path, spec.line)
        compiler.add(
            f"pair:{first.key}",
            CompiledRule(
                id=f"interaction.{spec.id}", category=spec.category, severity=spec.severity, message=spec.message,
                source=compiler.where(path, spec.line),
                # The equality on `key` comes first, so a fact reaches only that key's rules.
                condition=all_of(eq("t", "pair"), eq("key", first.key), list_has("other_keys", [second.key]),
                               *selector_tests("a", first), *selector_tests("b", second)),
                evidence_fields=("a_drug", "b_drug", *selector_evidence(first, second)),
                limits={"between": [label(first), label(second)]}, reference=spec.source, scope="pair",
            ),
        )
    for path, duplicate in duplicates:
        if duplicate.class_ not in classes:
            compiler.error(f"unknown class {duplicate.class_!r}", path, duplicate.line)
            continue
        compiler.check_message(duplicate.message, PAIR_PLACEHOLDERS, path, duplicate.line)
        key = f"class:{duplicate.class_}"
        partners[key].add(key)
        compiler.add(
            f"pair:{key}",
            CompiledRule(
                id=f"duplicate.{duplicate.id}", category="duplicate", severity=duplicate.severity,
                message=duplicate.message, source=compiler.where(path, duplicate.line),
                condition=all_of(eq("t", "pair"), eq("key", key), eq("same", 0), list_has("other_keys", [key]),
                               *([eq("a_sys", 1), eq("b_sys", 1)] if duplicate.systemic else [])),
                evidence_fields=("a_drug", "b_drug"), limits={"class_name": classes[duplicate.class_].name},
                reference=duplicate.source, scope="pair",
            ),
        )
    return partners
