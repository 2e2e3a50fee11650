"""``python -m rx_audit.server.keys new --facility LZH [--facility LZH-HW] [--id lzh-his] [--admin]``.

Prints the new key once (give it to the HIS; it is not stored anywhere) and the block to append to
the keys file (its hash only).
"""

from __future__ import annotations

import re
import secrets
import sys
from typing import Annotated

import typer

from rx_audit.server.auth import key_entry, new_key

app = typer.Typer(help="API keys of rx-audit serve.", no_args_is_help=True, add_completion=False)


@app.callback()
def main() -> None:
    """API keys of rx-audit serve."""


@app.command("new")
def new(
    facility: Annotated[list[str], typer.Option("--facility", "-f", help="a facility id the key may use (repeat)")],
    key_id: Annotated[str | None, typer.Option("--id", help="the key's name in logs (default: generated)")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="may also call /v1/admin/* (rulebook reload)")] = False,
) -> None:
    """Print a new API key once, and its block for the keys file."""
    key_id = key_id or f"key-{secrets.token_hex(4)}"
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", key_id):
        print("rx-audit: --id: letters, digits, '.', '_' or '-' (at most 64)", file=sys.stderr)
        raise typer.Exit(2)
    if any(not re.fullmatch(r"[^\"\\\x00-\x1f]{1,64}", f) for f in facility):
        print("rx-audit: --facility: a facility id without quotes, backslashes or control characters", file=sys.stderr)
        raise typer.Exit(2)
    key = new_key()
    print("# the key — give it to the HIS once; it is stored nowhere:")
    print(key)
    print("\n# append to the keys file:")
    print(key_entry(key_id, key, facility, admin=admin))


if __name__ == "__main__":
    app()
