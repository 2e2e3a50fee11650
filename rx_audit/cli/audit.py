"""``rx-audit audit``: audit prescriptions, one result a line in input order (CONTRACT §2), or a table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from rx_audit.cli.common import RulesOption, fail, load_auditor
from rx_audit.contract import AuditResult, RecordError
from rx_audit.io import iter_records

_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
_SEVERITY_ZH = {"critical": "拦截", "warning": "警示", "info": "提示"}


def audit(
    file: Annotated[str, typer.Argument(help="JSON Lines or a JSON array of prescriptions; - for stdin")],
    rules: RulesOption = None,
    output_format: Annotated[str, typer.Option("--format", "-f", help="jsonl (default) or table")] = "jsonl",
) -> None:
    """审方 Audit prescriptions: one result per line, in input order (CONTRACT §2).

    Exit status 0 when every record was read, 1 when any record could not be parsed.
    """
    if output_format not in ("jsonl", "table"):
        fail(f"--format is jsonl or table, not {output_format!r}")
    if file != "-" and not Path(file).is_file():
        fail(f"no such file: {file}")
    auditor = load_auditor(rules)
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


def _verdict(outcome: AuditResult) -> str:
    if not outcome.severity:
        return "[green]通过[/green]"
    severity = str(getattr(outcome.severity, "value", outcome.severity))
    style, label = _SEVERITY_STYLE[severity], _SEVERITY_ZH[severity]
    return f"[{style}]{label}[/{style}]" if outcome.flagged else f"[{style}]通过（{label}）[/{style}]"


def _findings(outcome: AuditResult) -> str:
    lines = []
    for finding in outcome.findings:
        severity = str(finding.severity)
        style = _SEVERITY_STYLE[severity]
        where = f" 第{finding.item}项" if finding.item else ""
        lines.append(
            f"[{style}]{_SEVERITY_ZH[severity]}[/{style}]{where} {finding.message}  "
            f"[dim]{finding.rule} @ {finding.source}[/dim]"
        )
    return "\n".join(lines) or "—"


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
        table.add_row(outcome.id, _verdict(outcome), _findings(outcome))
    console.print(table)
    unreadable = sum(isinstance(r, RecordError) for r in results)
    console.print(f"{len(results)} 张处方，{flagged} 张需药师审核 (flagged)，{unreadable} 张无法读取")
