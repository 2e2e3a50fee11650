"""The examples written inside rule files, run against the engine (``rx-audit rules test``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rx_audit.contract import SEVERITY_RANK, AuditResult
from rx_audit.engine.auditor import Auditor
from rx_audit.errors import RxAuditError
from rx_audit.rulebook import RuleExample


@dataclass
class ExampleOutcome:
    example: RuleExample
    result: AuditResult | None
    missing: list[str] = field(default_factory=list)  # expected rules that did not fire
    unexpected: list[str] = field(default_factory=list)  # warning/critical findings nobody expected
    error: str | None = None

    @property
    def passed(self) -> bool:
        return not (self.missing or self.unexpected or self.error)


def check_expectation(result: AuditResult, expect: list[str]) -> tuple[list[str], list[str]]:
    """Every expected rule must fire; nothing else of warning or critical severity may.

    Info findings (notes such as "no allergy history") never fail an example unless expected.
    """
    fired = {finding.rule for finding in result.findings}
    missing = sorted(set(expect) - fired)
    unexpected = sorted({
        finding.rule for finding in result.findings
        if SEVERITY_RANK[str(finding.severity)] >= SEVERITY_RANK["warning"] and finding.rule not in expect
    })
    return missing, unexpected


def run_examples(auditor: Auditor) -> list[ExampleOutcome]:
    outcomes = []
    for example in auditor.rulebook.examples:
        try:
            result = auditor.audit(example.prescription)
        except RxAuditError as error:
            outcomes.append(ExampleOutcome(example, None, error=str(error)))
            continue
        missing, unexpected = check_expectation(result, example.expect)
        outcomes.append(ExampleOutcome(example, result, missing, unexpected))
    return outcomes
