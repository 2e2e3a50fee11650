"""``rx-audit``: audit prescriptions, check and test rule files, explain a rule — and, with the
``queue`` extra installed, replay batches into the review queue and inspect it.

One module a command group: :mod:`.audit`, :mod:`.rules`, :mod:`.explain`, :mod:`.formulary`, :mod:`.queue`,
:mod:`.replay`, :mod:`.serve`; :mod:`.common` and :mod:`.database` hold what they share. Nothing here imports this
package back, so there is no import cycle.
"""

from __future__ import annotations

import importlib.util
from typing import Annotated

import typer

from rx_audit import __version__
from rx_audit.cli import audit, explain, formulary, rules
from rx_audit.cli.common import default_rules_dir, fail

__all__ = ["app", "default_rules_dir", "queue_extra_installed", "server_extra_installed"]

app = typer.Typer(
    help="rx_audit 处方前置审核 — prescription audit on durable_rules.",
    no_args_is_help=True,
    add_completion=False,
)


def _show_version(value: bool) -> None:
    if value:
        print(f"rx-audit {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_show_version, is_eager=True, help="print the version and exit"),
    ] = None,
) -> None:
    """rx_audit 处方前置审核 — prescription audit on durable_rules."""


app.command("audit")(audit.audit)
app.add_typer(rules.app, name="rules")
app.command("explain")(explain.explain)
app.add_typer(formulary.app, name="formulary")


def queue_extra_installed() -> bool:
    """The database stack of the ``queue`` extra is importable (the core installs without it)."""
    return all(importlib.util.find_spec(name) is not None for name in ("sqlalchemy", "sqlmodel", "alembic"))


_EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _needs_the_queue_extra() -> None:
    fail("this command needs the queue extra: pip install 'rx-audit[queue]'")


if queue_extra_installed():
    from rx_audit.cli import queue as _queue
    from rx_audit.cli import replay as _replay

    app.add_typer(_queue.app, name="queue")
    app.command("replay")(_replay.replay)
else:  # the core alone: say what is missing instead of "No such command"
    for _name in ("queue", "replay"):
        app.command(_name, context_settings=_EXTRA_ARGS, help="(needs the queue extra)")(_needs_the_queue_extra)


def server_extra_installed() -> bool:
    """The web stack of the ``server`` extra (and the queue it serves) is importable."""
    return queue_extra_installed() and all(
        importlib.util.find_spec(name) is not None for name in ("fastapi", "uvicorn", "prometheus_client")
    )


def _needs_the_server_extra() -> None:
    fail("this command needs the server extra: pip install 'rx-audit[server]'")


if server_extra_installed():
    from rx_audit.cli import serve as _serve

    app.command("serve")(_serve.serve)
else:
    app.command("serve", context_settings=_EXTRA_ARGS, help="(needs the server extra)")(_needs_the_server_extra)
