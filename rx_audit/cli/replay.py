"""``rx-audit replay``: audit a past batch into the review queue (or compare two rulebooks on it).

Loaded only when the ``queue`` extra is installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from rx_audit.cli.common import default_rules_dir, fail
from rx_audit.cli.database import DbOption, database_url, one_line_errors, writable_file


@one_line_errors
def replay(
    file: Annotated[Path, typer.Argument(help="JSON Lines or a JSON array")],
    db: DbOption = None,
    rules: Annotated[Path | None, typer.Option("--rules", help="rulebook directory")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="write an HTML report with charts")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="audit processes")] = 1,
    compare: Annotated[tuple[Path, Path] | None, typer.Option("--compare", help="OLD NEW rulebooks: what-if")] = None,
    chunk: Annotated[int, typer.Option("--chunk", min=1, help="records per transaction")] = 500,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bar")] = True,
) -> None:
    """Audit a past batch, queue the flagged ones, print a summary. Resumable: re-run after a crash."""
    from rx_audit import replay as replay_module
    from rx_audit import report as report_module

    if not file.is_file():
        fail(f"no such file: {file}")
    writable_file(report, "--report")
    factory = os.environ.get("RX_AUDIT_AUDITOR_FACTORY")  # module:function, for tests and plug-ins
    if compare:
        old, new = compare
        result = replay_module.compare(
            file, old, new, workers=workers, chunk_size=chunk, progress=progress, auditor_factory=factory
        )
        data = result.to_dict()
        _print_json(data) if as_json else _print_compare(data)
        _write_report(report, report_module.render_compare, data)
        return
    url = database_url(db, default=None)
    if not url:
        fail("--db URL is required (or $RX_AUDIT_DB_URL, or --compare OLD NEW)")
    run = replay_module.replay(
        file,
        url,
        rules=rules or default_rules_dir(),
        workers=workers,
        chunk_size=chunk,
        progress=progress,
        auditor_factory=factory,
    )
    data = run.to_dict()
    _print_json(data) if as_json else _print_summary(data)
    _write_report(report, report_module.render_replay, data)


def _print_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, ensure_ascii=False, default=str))


def _write_report(path: Path | None, render: Any, data: dict[str, Any]) -> None:
    if path is None:
        return
    path.write_text(render(data), encoding="utf-8")
    Console(stderr=True).print(f"report: {path}")


def _print_summary(data: dict[str, Any]) -> None:
    console = Console()
    summary = data["summary"]
    console.print(
        f"[bold]{data['file']}[/bold]: this run read {data['read']:,} records in {data['seconds']:.1f}s "
        f"({data['rate']:,.0f}/s): {data['stored']:,} stored ({data['new_versions']:,} new versions), "
        f"{data['flagged']:,} flagged, {data['repeats']:,} repeats, {data['skipped']:,} already stored, "
        f"{data['errors']:,} unreadable"
    )
    share = summary["flagged_share"]
    console.print(
        f"batch: {summary['total']:,} prescriptions, {summary['flagged']:,} flagged ({share:.1%} )"
        if share is not None
        else f"batch: {summary['total']:,} prescriptions",
    )
    console.print(f"unreadable records in the batch: {summary['errors']:,}")
    for error in summary["error_samples"][:10]:
        console.print(f"  line {error['line']} id {error['id'] or '—'} {error['field'] or ''}: {error['error']}")
    for title in ("by_severity", "by_category", "by_rule", "by_facility", "by_prescriber"):
        values = summary[title]
        if values:
            top = ", ".join(f"{k} {v:,}" for k, v in list(values.items())[:12])
            console.print(f"[bold]{title.removeprefix('by_')}[/bold]: {top}")


def _print_compare(data: dict[str, Any]) -> None:
    console = Console()
    console.print(
        f"[bold]{data['file']}[/bold]: {data['total']:,} audited with both rulebooks, {data['errors']:,} unreadable; "
        f"flagged {data['old_flagged']:,} → {data['new_flagged']:,}; {data['changed']:,} change verdict "
        f"({data['newly_flagged']:,} newly flagged, {data['no_longer_flagged']:,} no longer flagged, "
        f"{data['severity_changed']:,} change severity)"
    )
    for title, key in (("rules firing only with NEW", "rules_added"), ("rules firing only with OLD", "rules_removed")):
        if data[key]:
            console.print(f"[bold]{title}[/bold]: " + ", ".join(f"{k} {v:,}" for k, v in list(data[key].items())[:15]))
    for change in data["changes"][:20]:
        console.print(
            f"  {change['id']} (line {change['line']}): "
            f"{change['old_severity'] or '—'} → {change['new_severity'] or '—'}"
            f" +{','.join(change['rules_added'])} -{','.join(change['rules_removed'])}"
        )
