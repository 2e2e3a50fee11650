"""``rx-audit queue migrate|verify|stats|list``: the review queue from the command line.

Loaded only when the ``queue`` extra (SQLAlchemy, sqlmodel, Alembic) is installed.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from rx_audit.cli.common import fail
from rx_audit.cli.database import DbOption, database_url, existing_database, issue_date, mask, one_line_errors

if TYPE_CHECKING:
    from rx_audit.queue import QueueStatistics, ReviewItem

app = typer.Typer(help="药师审方队列 the pharmacist review queue.", no_args_is_help=True)

STATUSES = ("pending", "claimed", "approved", "returned", "double_signed", "escalated", "auto_passed")
SEVERITIES = ("info", "warning", "critical")


@app.command("migrate")
@one_line_errors
def migrate_command(
    db: DbOption = None,
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
    from rx_audit.queue import migrate

    url = database_url(db)
    assert url is not None
    version = migrate(url, grant_to=grant or [], revision=revision)
    print(f"schema at {version} (数据库结构已是最新): {mask(url)}")


@app.command("verify")
@one_line_errors
def verify_command(db: DbOption = None) -> None:
    """Check the audit trail and decisions' hash chains and every item's status; exit 1 at the first break."""
    from rx_audit.queue import ReviewQueue

    with ReviewQueue(existing_database(db)) as queue:
        result = queue.verify()
    print(result.message, file=sys.stdout if result.ok else sys.stderr)
    raise typer.Exit(0 if result.ok else 1)


@app.command("stats")
@one_line_errors
def stats_command(
    db: DbOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object (total, pending, approved, returned, rates…)")
    ] = False,
    date_from: Annotated[str | None, typer.Option("--from", help="issue date YYYY-MM-DD")] = None,
    date_to: Annotated[str | None, typer.Option("--to", help="issue date YYYY-MM-DD")] = None,
) -> None:
    """Queue statistics: held, pass-after-review and returned rates, time to decision, per-rule overrides."""
    from rx_audit.queue import ReviewQueue

    day_from, day_to = issue_date(date_from, "--from"), issue_date(date_to, "--to")
    if day_from and day_to and day_from > day_to:
        fail(f"--from {day_from} is after --to {day_to}")
    with ReviewQueue(existing_database(db)) as queue:
        stats = queue.statistics(day_from, day_to)
    if as_json:
        print(json.dumps(stats.model_dump(mode="json"), ensure_ascii=False))
        return
    _print_stats(stats)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"


def _print_stats(stats: QueueStatistics) -> None:
    console = Console()
    table = Table(title="审方队列 review queue", show_header=False)
    for key in ("prescriptions", "flagged", "total", "pending", "claimed", "approved", "returned",
                "double_signed", "escalated", "auto_passed"):  # fmt: skip
        table.add_row(key, _fmt(getattr(stats, key)))
    for key in ("held_rate", "pass_after_review_rate", "returned_rate"):
        rate = getattr(stats, key)
        table.add_row(key, f"{_pct(rate.value)} ({rate.numerator}/{rate.denominator})")
    table.add_row("oldest_pending_age_seconds", _fmt(stats.oldest_pending_age_seconds))
    ttd = stats.time_to_decision_seconds
    table.add_row("time_to_decision (median / p90 s)", f"{_fmt(ttd.median)} / {_fmt(ttd.p90)}")
    console.print(table)
    for title, groups in (("severity", stats.by_severity), ("category", stats.by_category),
                          ("facility", stats.by_facility)):  # fmt: skip
        console.print(f"[bold]{title}[/bold]: " + ", ".join(f"{g.key} {g.items}" for g in groups if g.items))
    if stats.rule_override:
        rules = Table(title="规则被药师推翻率 per-rule override rate")
        for column in ("rule", "fired", "decided", "approved", "override_rate"):
            rules.add_column(column)
        for row in stats.rule_override[:20]:
            rules.add_row(row.rule, str(row.fired), str(row.decided), str(row.approved), _pct(row.override_rate.value))
        console.print(rules)


def _choice(value: str | None, allowed: tuple[str, ...], option: str) -> list[str] | None:
    """A comma-separated list of allowed values, or one clear line."""
    if value is None:
        return None
    chosen = [part.strip() for part in value.split(",") if part.strip()]
    wrong = [part for part in chosen if part not in allowed]
    if wrong or not chosen:
        fail(f"{option} {value!r}: 应为 (must be) {'|'.join(allowed)}")
    return chosen


@app.command("list")
@one_line_errors
def list_command(
    db: DbOption = None,
    status: Annotated[str | None, typer.Option(help="|".join(STATUSES) + " (comma-separated)")] = None,
    facility: Annotated[str | None, typer.Option(help="facility id")] = None,
    severity: Annotated[str | None, typer.Option(help="|".join(SEVERITIES) + " (comma-separated)")] = None,
    claimed_by: Annotated[str | None, typer.Option("--claimed-by", help="pharmacist id")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a line")] = False,
) -> None:
    """One page of review items (queue order for pending, else newest first)."""
    from rx_audit.queue import ReviewQueue

    filters: dict[str, Any] = {
        "status": _choice(status, STATUSES, "--status"),
        "severity": _choice(severity, SEVERITIES, "--severity"),
        "facility": facility,
        "claimed_by": claimed_by,
    }
    with ReviewQueue(existing_database(db)) as queue:
        items = queue.list_items(**filters, limit=limit, offset=offset)
        total = queue.count(**filters)
    if as_json:
        for item in items:
            print(item.model_dump_json())
        return
    _print_items(items, offset, total)


def _print_items(items: list[ReviewItem], offset: int, total: int) -> None:
    table = Table(title=f"审方任务 review items {offset + 1}–{offset + len(items)} / {total}")
    for column in ("id", "prescription", "v", "status", "severity", "categories", "facility", "department",
                   "prescriber", "submitted", "claimed_by"):  # fmt: skip
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
