"""``rx-audit formulary import FILE --facility ID``: a HIS drug dictionary (CSV or Excel) into the
facility's formulary, every line matched to the drug dictionary or listed with its reason."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from rx_audit.adapters.formulary import FormularyImportError, match_formulary, read_his_dictionary, write_formulary
from rx_audit.cli.common import RulesOption, default_rules_dir, fail, print_rulebook_errors
from rx_audit.errors import RulebookError
from rx_audit.rulebook import load_rulebook

app = typer.Typer(help="机构药品目录 facility formularies: import from the HIS drug dictionary.", no_args_is_help=True)


@app.command("import")
def import_formulary(
    file: Annotated[Path, typer.Argument(help="the HIS drug dictionary export: .csv (UTF-8 or GBK) or .xlsx")],
    facility: Annotated[str, typer.Option("--facility", help="the facility id prescriptions carry")],
    rules: RulesOption = None,
    name: Annotated[str | None, typer.Option("--name", help="the facility's name")] = None,
    level: Annotated[str | None, typer.Option("--level", help="county | township | village")] = None,
) -> None:
    """导入目录 Match each line to the drug dictionary; write rules/formularies/<facility>.yaml and a report."""
    root = rules or default_rules_dir()
    if not file.is_file():
        fail(f"no such file: {file}")
    try:
        rulebook = load_rulebook(root)
        lines = read_his_dictionary(file)
    except RulebookError as error:
        print_rulebook_errors(error)
        raise typer.Exit(2) from error
    except FormularyImportError as error:
        fail(f"{file}: {error}")
    match = match_formulary(lines, rulebook, facility, f"HIS药品字典导入 {file.name}")
    try:
        out, report = write_formulary(match, root, name=name, level=level)
    except OSError as error:
        fail(f"cannot write the formulary under {root}: {error.strerror}")
    console = Console()
    console.print(f"{match.lines} 行 lines: {len(match.matched)} matched, {len(match.unmatched)} unmatched "
                  f"(listed with their reason) → {out}; report {report}", highlight=False)
    for entry in match.unmatched[:20]:
        console.print(f"  unmatched {entry.get('code', '')} {entry.get('name', '')}: {entry['reason']}",
                      highlight=False)
