"""``rx-audit serve``: the HTTP service of CONTRACT §4 (extra ``server``), under uvicorn.

Settings: the options here, else the environment (``RX_AUDIT_RULES``, ``RX_AUDIT_DB_URL``,
``RX_AUDIT_KEYS`` …), else ``--config FILE`` (TOML). The rulebook, the keys file and the database are
checked before uvicorn starts: a problem is one line and exit status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rx_audit.cli.common import RulesOption, fail
from rx_audit.cli.database import DbOption, database_url, mask


def serve(
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="port")] = 8080,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="worker processes (share the database)")] = 1,
    rules: RulesOption = None,
    db: DbOption = None,
    keys: Annotated[Path | None, typer.Option("--keys", help="API keys file (TOML; default $RX_AUDIT_KEYS)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="server settings (TOML)")] = None,
    max_body: Annotated[int | None, typer.Option("--max-body", min=1, help="request size limit, bytes")] = None,
    rate: Annotated[float | None, typer.Option("--rate", min=0.01, help="requests a minute per key and worker")] = None,
    max_wait: Annotated[
        float | None, typer.Option("--max-wait", min=0.1, help="cap of ?wait= long polls, seconds (default 25)")
    ] = None,
    graceful: Annotated[
        int, typer.Option("--graceful", min=0, help="seconds to finish accepted requests on SIGTERM (≥ max wait + 5)")
    ] = 30,
    proxy_headers: Annotated[
        bool, typer.Option("--proxy-headers", help="trust X-Forwarded-For from --forwarded-allow-ips (behind nginx)")
    ] = False,
    forwarded_allow_ips: Annotated[str | None, typer.Option("--forwarded-allow-ips", help="proxy addresses")] = None,
) -> None:
    """Serve CONTRACT §4 for an HIS: POST /v1/audit, GET /v1/prescriptions/{id}, double-sign, health, metrics."""
    from rx_audit.server.run import Listen, check
    from rx_audit.server.run import serve as run_server
    from rx_audit.server.settings import Settings, SettingsError

    try:
        settings = Settings.load(
            config, rules=rules, db_url=database_url(db, default=None), keys_file=keys,
            max_body_bytes=max_body, rate_per_minute=rate, max_wait_seconds=max_wait,
        )  # fmt: skip
    except (SettingsError, ValueError) as error:
        fail(str(error))
    try:
        rulebook = check(settings)
    except Exception as error:  # the rulebook, the database: one line, the URL masked
        fail(f"{type(error).__name__}: {str(error).replace(settings.db_url, mask(settings.db_url))}")
    typer.echo(f"rx-audit serve: http://{host}:{port} · {workers} worker(s) · rulebook {rulebook[:19]} · "
               f"database {mask(settings.db_url)}", err=True)  # fmt: skip
    run_server(settings, Listen(host, port, workers, graceful, proxy_headers, forwarded_allow_ips))
