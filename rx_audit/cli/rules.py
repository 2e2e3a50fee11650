"""``rx-audit rules check|test``: validate a rulebook folder, run the examples written in it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from rx_audit.cli.common import default_rules_dir, fail, load_auditor
from rx_audit.engine.check import check_rulebook
from rx_audit.engine.selftest import ExampleOutcome, run_examples

app = typer.Typer(help="规则库 rule files: check and test.", no_args_is_help=True)


@app.command("check")
def check(directory: Annotated[Path | None, typer.Argument(help="rulebook folder")] = None) -> None:
    """校验 Validate rule files; every error names file and line; exit 1 on any error."""
    path = directory or default_rules_dir()
    if not path.is_dir():
        fail(f"no such rulebook folder: {path}")
    # Everything loading does, registration in durable_rules included: a rulebook that passes
    # check must load (limits of 1e20 or a 506-value list once passed and then broke).
    report = check_rulebook(path, examples=False)
    if not report.ok:
        console = Console(stderr=True)
        for error in report.errors:
            console.print(f"[red]error[/red] {error}", highlight=False)
        console.print(f"[bold red]{len(report.errors)} error(s)[/bold red]")
        raise typer.Exit(1)
    console = Console()
    for warning in report.warnings:
        console.print(f"[yellow]warning[/yellow] {warning}")
    console.print(
        f"[green]OK[/green] {report.drugs} drugs, {report.rules} rules (+{report.twins} missing-data twins) "
        f"in {report.rulesets} durable rulesets; {report.rulebook_hash}"
    )


@app.command("test")
def test(
    directory: Annotated[Path | None, typer.Argument(help="rulebook folder")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="list passing examples too")] = False,
) -> None:
    """试审 Run the examples written in the rule files; exit 1 if any fails."""
    auditor = load_auditor(directory)
    outcomes = run_examples(auditor)
    failed = [outcome for outcome in outcomes if not outcome.passed]
    for outcome in outcomes if verbose else failed:
        _print_outcome(outcome)
    Console().print(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed")
    raise typer.Exit(1 if failed else 0)


def _print_outcome(outcome: ExampleOutcome) -> None:
    console = Console()
    mark = "[green]PASS[/green]" if outcome.passed else "[red]FAIL[/red]"
    console.print(f"{mark} {outcome.example.source} {outcome.example.name}", highlight=False)
    if outcome.error:
        console.print(f"     error: {outcome.error}")
    if outcome.missing:
        console.print(f"     expected but not fired: {', '.join(outcome.missing)}")
    if outcome.unexpected and outcome.result is not None:
        for finding in outcome.result.findings:
            if finding.rule in outcome.unexpected:
                console.print(
                    f"     unexpected: {finding.rule} ({finding.severity}) {finding.message}", highlight=False
                )


@app.command("dictionary")
def dictionary(directory: Annotated[Path | None, typer.Argument(help="rulebook folder")] = None) -> None:
    """药品词典 Validate the drug dictionary alone (fast, for its editors); list names two entries share."""
    from rx_audit.rulebook.dictionary import _main

    path = directory or default_rules_dir()
    if not (path / "dictionary").is_dir():
        fail(f"no dictionary folder under {path}")
    raise typer.Exit(_main([str(path / "dictionary")]))
