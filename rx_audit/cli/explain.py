"""``rx-audit explain RULE``: a rule, where it is written, its source and its durable_rules condition."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from rx_audit.cli.common import RulesOption, default_rules_dir, fail, print_rulebook_errors
from rx_audit.errors import RulebookError
from rx_audit.rulebook import load_rulebook


def explain(
    rule_id: Annotated[str, typer.Argument(help="rule id, e.g. metformin.contra.egfr_lt_30")],
    rules: RulesOption = None,
) -> None:
    """Show a rule: where it is written, its source and the durable_rules condition it compiles to."""
    try:
        rulebook = load_rulebook(rules or default_rules_dir())
    except RulebookError as error:
        print_rulebook_errors(error)
        raise typer.Exit(2) from error
    matches = [rule for rule in rulebook.rules.values() if rule.id == rule_id]
    if not matches:
        fail(f"no rule {rule_id}", status=1)
    for rule in matches:
        print(
            json.dumps(
                {
                    "id": rule.id,
                    "category": rule.category,
                    "severity": rule.severity,
                    "message": rule.message,
                    "source": rule.source,
                    "reference": rule.reference,
                    "condition": rule.condition,
                },
                ensure_ascii=False,
                indent=2,
            )
        )
