"""``rx-audit``: audit prescriptions, check and test rule files, replay batches, inspect the queue."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from rx_audit.contract import AuditResult, RecordError
from rx_audit.engine import Auditor
from rx_audit.errors import RulebookError, RulebookErrors
from rx_audit.io import iter_records

app = typer.Typer(
    help="rx_audit 处方前置审核 — prescription audit on durable_rules.",
    no_args_is_help=True,
    add_completion=False,
)
rules_app = typer.Typer(help="规则库 rule files: check and test.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")

_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
_SEVERITY_ZH = {"critical": "拦截", "warning": "警示", "info": "提示"}


def default_rules_dir() -> Path:
    return Path(os.environ.get("RX_AUDIT_RULES", "rules"))


RulesOption = Annotated[
    Path | None, typer.Option("--rules", "-r", help="rulebook folder (default: $RX_AUDIT_RULES or ./rules)")
]


def _load(rules: Path | None) -> Auditor:
    try:
        return Auditor.from_path(rules or default_rules_dir())
    except RulebookError as error:
        _print_rulebook_errors(error)
        raise typer.Exit(2) from error


def _print_rulebook_errors(error: RulebookError) -> None:
    errors = error.errors if isinstance(error, RulebookErrors) else [error]
    console = Console(stderr=True)
    for entry in errors:
        console.print(f"[red]{entry.location}[/red]: {entry.message}", highlight=False)
    console.print(f"[bold red]{len(errors)} error(s)[/bold red]")


@app.command()
def audit(
    file: Annotated[str, typer.Argument(help="JSON Lines or a JSON array of prescriptions; - for stdin")],
    rules: RulesOption = None,
    output_format: Annotated[str, typer.Option("--format", "-f", help="jsonl (default) or table")] = "jsonl",
) -> None:
    """审方 Audit prescriptions: one result per line, in input order (CONTRACT §2).

    Exit status 0 when every record was read, 1 when any record could not be parsed.
    """
    if output_format not in ("jsonl", "table"):
        raise typer.BadParameter("--format is jsonl or table")
    if file != "-" and not Path(file).exists():
        Console(stderr=True).print(f"[red]no such file: {file}[/red]")
        raise typer.Exit(2)
    auditor = _load(rules)
    bad = 0
    results: list[AuditResult | RecordError] = []
    for outcome in auditor.audit_stream(iter_records(file)):
        if isinstance(outcome, RecordError):
            bad += 1
            Console(stderr=True).print(f"[red]record error[/red] {outcome.to_json()}", highlight=False)
        if output_format == "jsonl":
            sys.stdout.write(outcome.to_json() + "\n")
        else:
            results.append(outcome)
    if output_format == "table":
        _print_table(results)
    raise typer.Exit(1 if bad else 0)


def _print_table(results: list[AuditResult | RecordError]) -> None:
    console = Console()
    table = Table(title="审方结果 Audit results", show_lines=True)
    table.add_column("处方 id")
    table.add_column("结论", no_wrap=True)
    table.add_column("问题 findings")
    flagged = 0
    for outcome in results:
        if isinstance(outcome, RecordError):
            table.add_row(outcome.id or f"line {outcome.line}", "[red]无法读取[/red]", outcome.error)
            continue
        flagged += outcome.flagged
        verdict = "[green]通过[/green]"
        if outcome.severity:
            style = _SEVERITY_STYLE[str(outcome.severity.value if hasattr(outcome.severity, "value")
                                        else outcome.severity)]
            label = _SEVERITY_ZH[str(getattr(outcome.severity, "value", outcome.severity))]
            verdict = f"[{style}]{label}[/{style}]" if outcome.flagged else f"[{style}]通过（{label}）[/{style}]"
        lines = []
        for finding in outcome.findings:
            severity = str(finding.severity)
            style = _SEVERITY_STYLE[severity]
            where = f" 第{finding.item}项" if finding.item else ""
            lines.append(f"[{style}]{_SEVERITY_ZH[severity]}[/{style}]{where} {finding.message}  "
                         f"[dim]{finding.rule} @ {finding.source}[/dim]")
        table.add_row(outcome.id, verdict, "\n".join(lines) or "—")
    console.print(table)
    total = len(results)
    console.print(f"{total} 张处方，{flagged} 张需药师审核 (flagged)，"
                  f"{sum(isinstance(r, RecordError) for r in results)} 张无法读取")


@rules_app.command("check")
def rules_check(directory: Annotated[Path | None, typer.Argument(help="rulebook folder")] = None) -> None:
    """校验 Validate rule files; every error names file and line; exit 1 on any error."""
    from rx_audit.errors import EngineError
    from rx_audit.rulebook import load_rulebook

    try:
        rulebook = load_rulebook(directory or default_rules_dir())
        # Everything loading does, registration in durable_rules included: a rulebook that
        # passes check must load (limits of 1e20 or a 506-value list once passed and then broke).
        Auditor(rulebook).close()
    except RulebookError as error:
        _print_rulebook_errors(error)
        raise typer.Exit(1) from error
    except EngineError as error:
        Console(stderr=True).print(f"[red]durable_rules refused the rulebook[/red]: {error}", highlight=False)
        raise typer.Exit(1) from error
    console = Console()
    for warning in rulebook.warnings:
        console.print(f"[yellow]warning[/yellow] {warning}")
    primary = sum(1 for rule in rulebook.rules.values() if rule.missing_field is None)
    console.print(
        f"[green]OK[/green] {len(rulebook.drugs)} drugs, {primary} rules "
        f"(+{len(rulebook.rules) - primary} missing-data twins) in {len(rulebook.rulesets)} durable rulesets, "
        f"{len(rulebook.examples)} examples; {rulebook.hash}"
    )


@rules_app.command("test")
def rules_test(
    directory: Annotated[Path | None, typer.Argument(help="rulebook folder")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="list passing examples too")] = False,
) -> None:
    """试审 Run the examples written in the rule files; exit 1 if any fails."""
    from rx_audit.engine.selftest import run_examples

    auditor = _load(directory)
    outcomes = run_examples(auditor)
    console = Console()
    failed = [outcome for outcome in outcomes if not outcome.passed]
    for outcome in outcomes if verbose else failed:
        mark = "[green]PASS[/green]" if outcome.passed else "[red]FAIL[/red]"
        console.print(f"{mark} {outcome.example.source} {outcome.example.name}", highlight=False)
        if outcome.error:
            console.print(f"     error: {outcome.error}")
        if outcome.missing:
            console.print(f"     expected but not fired: {', '.join(outcome.missing)}")
        if outcome.unexpected and outcome.result is not None:
            for finding in outcome.result.findings:
                if finding.rule in outcome.unexpected:
                    console.print(f"     unexpected: {finding.rule} ({finding.severity}) {finding.message}",
                                  highlight=False)
    console.print(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed")
    raise typer.Exit(1 if failed else 0)


@app.command()
def explain(
    rule_id: Annotated[str, typer.Argument(help="rule id, e.g. metformin.contra.egfr_lt_30")],
    rules: RulesOption = None,
) -> None:
    """Show a rule: where it is written, its source and the durable_rules condition it compiles to."""
    from rx_audit.rulebook import load_rulebook

    rulebook = load_rulebook(rules or default_rules_dir())
    matches = [rule for rule in rulebook.rules.values() if rule.id == rule_id]
    if not matches:
        Console(stderr=True).print(f"[red]no rule {rule_id}[/red]")
        raise typer.Exit(1)
    for rule in matches:
        print(json.dumps({"id": rule.id, "category": rule.category, "severity": rule.severity,
                          "message": rule.message, "source": rule.source, "reference": rule.reference,
                          "condition": rule.condition}, ensure_ascii=False, indent=2))


def _register_optional_commands() -> None:
    """The queue and replay commands live in their own module; the audit works without them."""
    try:
        from rx_audit.cli_queue import queue_app, replay_command
    except ImportError:  # pragma: no cover - only while the queue module is absent
        return
    app.add_typer(queue_app, name="queue")
    app.command("replay")(replay_command)


_register_optional_commands()


if __name__ == "__main__":  # pragma: no cover
    app()
