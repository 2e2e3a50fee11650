"""``rx-audit queue stats|list|migrate|verify`` and ``rx-audit replay`` (wired into :mod:`rx_audit.cli`).

A failure of the queue or its database (down, locked, read-only, full, schema not migrated) is one
line on stderr and exit status 2, with any URL's password masked; never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

queue_app = typer.Typer(help="药师审方队列 the pharmacist review queue.", no_args_is_help=True)

DbOption = Annotated[str, typer.Option("--db", help="SQLAlchemy URL, e.g. sqlite:///rx_audit.db", envvar="RX_AUDIT_DB")]
_F = TypeVar("_F", bound=Callable[..., Any])


def one_line_errors(command: _F) -> _F:
    """QueueError (and a database error that is not one) → one line on stderr, exit status 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        from rx_audit.errors import QueueError
        from rx_audit.queue import mask_url

        try:
            return command(*args, **kwargs)
        except QueueError as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
        except SQLAlchemyError as error:
            first = str(getattr(error, "orig", None) or error).strip().splitlines()
            db = kwargs.get("db") or ""
            message = f"数据库错误 (database error): {mask_url(db) if db else ''}: {first[0] if first else ''}"
        db = kwargs.get("db")
        if db and "@" in db and ":" in db:  # never print a password, whatever the message quoted
            message = message.replace(db, mask_url(db))
        print(f"rx-audit: {message}", file=sys.stderr)
        raise typer.Exit(2)

    return wrapper  # type: ignore[return-value]


def _rules_dir(rules: Path | None) -> Path:
    if rules is not None:
        return rules
    try:
        from rx_audit.cli import default_rules_dir

        return Path(default_rules_dir())
    except ImportError:  # pragma: no cover
        return Path(os.environ.get("RX_AUDIT_RULES", "rules"))


@queue_app.command("migrate")
@one_line_errors
def migrate_command(
    db: DbOption = "sqlite:///rx_audit.db",
    grant: Annotated[
        list[str] | None,
        typer.Option(
            "--grant",
            help="PostgreSQL: application role to grant its rights to (repeatable)",
            envvar="RX_AUDIT_APP_ROLE",
        ),
    ] = None,
    revision: Annotated[str, typer.Option(help="target revision")] = "head",
) -> None:
    """Create or upgrade the queue's schema (Alembic migrations); run once, as the owner role on PostgreSQL."""
    from rx_audit.queue import mask_url, migrate

    version = migrate(db, grant_to=grant or [], revision=revision)
    print(f"schema at {version} (数据库结构已是最新): {mask_url(db)}")


@queue_app.command("verify")
@one_line_errors
def verify_command(db: DbOption = "sqlite:///rx_audit.db") -> None:
    """Check the audit trail and decisions' hash chains and every item's status; exit 1 at the first break."""
    from rx_audit.queue import ReviewQueue

    with ReviewQueue(db) as queue:
        result = queue.verify()
    print(result.message, file=sys.stdout if result.ok else sys.stderr)
    raise typer.Exit(0 if result.ok else 1)


@queue_app.command("stats")
@one_line_errors
def stats_command(
    db: DbOption = "sqlite:///rx_audit.db",
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object (total, pending, approved, returned…)")
    ] = False,
    date_from: Annotated[str | None, typer.Option("--from", help="issue date YYYY-MM-DD")] = None,
    date_to: Annotated[str | None, typer.Option("--to", help="issue date YYYY-MM-DD")] = None,
) -> None:
    """Queue statistics: held, pass-after-review and returned rates, time to decision, per-rule overrides."""
    from rx_audit.queue import ReviewQueue

    with ReviewQueue(db) as queue:
        stats = queue.statistics(date_from, date_to)
        stats["oldest_pending_age_seconds"] = queue.oldest_pending_age_seconds()
    if as_json:
        print(json.dumps(stats, ensure_ascii=False, default=str))
        return
    console = Console()
    table = Table(title="审方队列 review queue", show_header=False)
    for key in (
        "prescriptions",
        "flagged",
        "held_rate",
        "total",
        "pending",
        "claimed",
        "approved",
        "returned",
        "double_signed",
        "escalated",
        "auto_passed",
        "pass_after_review_rate",
        "returned_rate",
        "oldest_pending_age_seconds",
    ):
        table.add_row(key, _fmt(stats.get(key)))
    ttd = stats["time_to_decision_seconds"]
    table.add_row("time_to_decision (median / p90 s)", f"{_fmt(ttd['median'])} / {_fmt(ttd['p90'])}")
    console.print(table)
    for title, key in (("severity", "by_severity"), ("category", "by_category"), ("facility", "by_facility")):
        console.print(f"[bold]{title}[/bold]: " + ", ".join(f"{k} {v}" for k, v in stats[key].items()))
    if stats["rule_override"]:
        rules = Table(title="规则被药师推翻率 per-rule override rate")
        for column in ("rule", "fired", "decided", "approved", "override_rate"):
            rules.add_column(column)
        for row in stats["rule_override"][:20]:
            rules.add_row(*(_fmt(row[c]) for c in ("rule", "fired", "decided", "approved", "override_rate")))
        console.print(rules)


@queue_app.command("list")
@one_line_errors
def list_command(
    db: DbOption = "sqlite:///rx_audit.db",
    status: Annotated[
        str | None, typer.Option(help="pending|claimed|approved|returned|double_signed|escalated|auto_passed")
    ] = None,
    facility: Annotated[str | None, typer.Option(help="facility id")] = None,
    severity: Annotated[str | None, typer.Option(help="info|warning|critical")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a line")] = False,
) -> None:
    """One page of review items (queue order for pending, else newest first)."""
    from rx_audit.queue import ReviewQueue

    with ReviewQueue(db) as queue:
        items = queue.list_items(status=status, facility=facility, severity=severity, limit=limit, offset=offset)
        total = queue.count(status=status, facility=facility, severity=severity)
    if as_json:
        for item in items:
            print(item.model_dump_json())
        return
    table = Table(title=f"审方任务 review items {offset + 1}–{offset + len(items)} / {total}")
    for column in (
        "id",
        "prescription",
        "v",
        "status",
        "severity",
        "categories",
        "facility",
        "department",
        "prescriber",
        "submitted",
        "claimed_by",
    ):
        table.add_column(column)
    for item in items:
        table.add_row(
            str(item.id),
            item.prescription_id,
            str(item.version),
            item.status,
            item.severity or "",
            ",".join(item.categories),
            item.facility_name or item.facility_id or "",
            item.department or "",
            item.prescriber_id or "",
            f"{item.submitted_at:%Y-%m-%d %H:%M}",
            item.claimed_by or "",
        )
    Console().print(table)


@one_line_errors
def replay_command(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON Lines or a JSON array")],
    db: Annotated[
        str | None, typer.Option("--db", help="SQLAlchemy URL of the review queue", envvar="RX_AUDIT_DB")
    ] = None,
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

    console = Console(stderr=True)
    factory = os.environ.get("RX_AUDIT_AUDITOR_FACTORY")  # module:function, for tests and plug-ins
    if compare:
        old, new = compare
        result = replay_module.compare(
            file, old, new, workers=workers, chunk_size=chunk, progress=progress, auditor_factory=factory
        )
        data = result.to_dict()
        if as_json:
            print(json.dumps(data, ensure_ascii=False, default=str))
        else:
            _print_compare(data)
        if report:
            report.write_text(report_module.render_compare(data), encoding="utf-8")
            console.print(f"report: {report}")
        return
    if not db:
        console.print("[red]--db URL is required (or --compare OLD NEW)[/red]")
        raise typer.Exit(2)
    run = replay_module.replay(
        file, db, rules=_rules_dir(rules), workers=workers, chunk_size=chunk, progress=progress, auditor_factory=factory
    )
    data = run.to_dict()
    if as_json:
        print(json.dumps(data, ensure_ascii=False, default=str))
    else:
        _print_summary(data)
    if report:
        report.write_text(report_module.render_replay(data), encoding="utf-8")
        console.print(f"report: {report}")


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.2%}" if value <= 1 else f"{value:,.1f}"
    return str(value)


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
