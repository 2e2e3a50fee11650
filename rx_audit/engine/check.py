"""Checking a rulebook folder as loading would use it: what `rx-audit rules check` and `rules test`
and the admin page run — validation with file:line, registration in durable_rules, the examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rx_audit.engine.auditor import Auditor
from rx_audit.engine.selftest import ExampleOutcome, run_examples
from rx_audit.errors import EngineError, RulebookError, RulebookErrors
from rx_audit.rulebook import load_rulebook


@dataclass
class CheckReport:
    """The outcome of checking one rulebook folder."""

    path: str
    ok: bool
    rulebook_hash: str | None = None
    errors: list[str] = field(default_factory=list)  # "file:line: message"
    warnings: list[str] = field(default_factory=list)
    drugs: int = 0
    rules: int = 0
    twins: int = 0
    rulesets: int = 0
    examples_passed: int = 0
    examples_failed: list[ExampleOutcome] = field(default_factory=list)


def check_rulebook(path: str | Path, *, examples: bool = True) -> CheckReport:
    """Load, register and (by default) run the examples of the rulebook at ``path``; never raises for it."""
    report = CheckReport(path=str(path), ok=False)
    try:
        rulebook = load_rulebook(path)
    except RulebookError as error:
        errors = error.errors if isinstance(error, RulebookErrors) else [error]
        report.errors = [str(entry) for entry in errors]
        return report
    report.rulebook_hash = rulebook.hash
    report.warnings = list(rulebook.warnings)
    report.drugs = len(rulebook.drugs)
    report.twins = sum(1 for rule in rulebook.rules.values() if rule.missing_field is not None)
    report.rules = len(rulebook.rules) - report.twins
    report.rulesets = len(rulebook.rulesets)
    try:
        auditor = Auditor(rulebook)
    except EngineError as error:
        report.errors = [f"durable_rules refused the rulebook: {error}"]
        return report
    try:
        if examples:
            outcomes = run_examples(auditor)
            report.examples_failed = [outcome for outcome in outcomes if not outcome.passed]
            report.examples_passed = len(outcomes) - len(report.examples_failed)
    finally:
        auditor.close()
    report.ok = not report.examples_failed
    return report
