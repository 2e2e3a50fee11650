"""What the commands share: the rulebook option, loading an auditor, one-line failures."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from rx_audit.engine import Auditor
from rx_audit.errors import RulebookError, RulebookErrors


def default_rules_dir() -> Path:
    return Path(os.environ.get("RX_AUDIT_RULES", "rules"))


RulesOption = Annotated[
    Path | None, typer.Option("--rules", "-r", help="rulebook folder (default: $RX_AUDIT_RULES or ./rules)")
]


def fail(message: str, status: int = 2) -> NoReturn:
    """One line on stderr (``rx-audit: …``), then exit with ``status``."""
    first = message.strip().splitlines()[0] if message.strip() else "error"
    print(f"rx-audit: {first}", file=sys.stderr)
    raise typer.Exit(status)


def load_auditor(rules: Path | None) -> Auditor:
    try:
        return Auditor.from_path(rules or default_rules_dir())
    except RulebookError as error:
        print_rulebook_errors(error)
        raise typer.Exit(2) from error


def print_rulebook_errors(error: RulebookError) -> None:
    errors = error.errors if isinstance(error, RulebookErrors) else [error]
    console = Console(stderr=True)
    for entry in errors:
        console.print(f"[red]{entry.location}[/red]: {entry.message}", highlight=False)
    console.print(f"[bold red]{len(errors)} error(s)[/bold red]")
