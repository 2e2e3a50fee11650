"""Hot reload of the rulebook, without a restart: ``kill -HUP <pid of rx-audit serve>`` or
``POST /v1/admin/reload`` with an admin key (``admin = true`` in the keys file).

Each worker reloads with :meth:`Auditor.reload` — the new rules are compiled before the swap, audits
in flight finish on the old version, and a rulebook with errors raises ``RulebookError`` while the
live version stays. ``/readyz`` (``checks.rulebook``) and every audit answer (``rulebook``) say which
version answered.

* SIGHUP to ``rx-audit serve``: with ``--workers N`` the supervisor forwards it to every worker
  (uvicorn's own would replace the workers); with one worker the signal reaches it directly. Each
  worker logs one JSON line (``"event": "rulebook_reload"``) and counts
  ``rx_audit_rulebook_reloads_total{outcome="reloaded"|"failed"}``.
* ``POST /v1/admin/reload``: the worker that takes the call reloads and answers — 200 with the new
  hash, or a 409 problem listing the rule files' errors (the live version stays) — then, under
  ``rx-audit serve --workers N``, SIGHUPs the supervisor so the other workers follow (the worker that
  answered reloads once more: the same files, the same hash). Several instances behind a load
  balancer each need the call (or the signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from rx_audit import RulebookError
from rx_audit.server.context import Caller, Services, services
from rx_audit.server.problems import Problem

router = APIRouter()
log = logging.getLogger("rx_audit.server")
SUPERVISOR_ENV = "RX_AUDIT_SUPERVISOR_PID"  # set by `rx-audit serve --workers N` for its workers
_serial = threading.Lock()  # one reload at a time per worker (a signal and a call may cross)


def _errors(error: RulebookError, root: Path) -> list[dict[str, Any]]:
    """Each error of the rule files: the file as the rulebook names it (never an absolute server path),
    the line, the message."""
    listed = getattr(error, "errors", None) or [error]
    out: list[dict[str, Any]] = []
    for each in listed[:50]:
        where = each.path  # the loader names files from the rulebook's folder (rules/drugs/…)
        if where and Path(where).is_absolute():
            with contextlib.suppress(ValueError):
                where = str(Path(where).relative_to(root.parent))
        out.append({"file": where, "line": each.line, "message": each.message})
    return out


def reload_rulebook(found: Services, how: str) -> dict[str, Any]:
    """Reload this worker's rulebook: ``{"rulebook", "previous"}``; RulebookError when it has errors."""
    with _serial:
        previous = found.auditor.rulebook_hash
        try:
            current = found.auditor.reload()
        except RulebookError:
            found.metrics.reloads.labels("failed").inc()
            _log(how, "failed", previous, previous)
            raise
        found.metrics.reloads.labels("reloaded").inc()
        _log(how, "reloaded", previous, current)
        return {"rulebook": current, "previous": previous}


def _log(how: str, outcome: str, previous: str, current: str) -> None:
    log.info(json.dumps({
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": "rulebook_reload", "by": how,
        "outcome": outcome, "worker": os.getpid(), "previous": previous, "rulebook": current,
    }))  # fmt: skip


def tell_siblings() -> bool:
    """Under ``rx-audit serve --workers N``: SIGHUP the supervisor, which forwards it to every worker."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if not supervisor or not supervisor.isdigit() or int(supervisor) != os.getppid():
        return False  # one worker, or not started by rx-audit serve: nobody else to tell
    os.kill(int(supervisor), signal.SIGHUP)
    return True


@router.post("/v1/admin/reload")
async def reload_endpoint(request: Request, key: Caller) -> JSONResponse:
    if not key.admin:
        raise Problem(403, f"key {key.id} is not an admin key (admin = true in the keys file)", kind="forbidden")
    found = services(request)
    root = Path(found.auditor.rulebook.root)
    try:
        answer = await run_in_threadpool(reload_rulebook, found, f"api:{key.id}")
    except RulebookError as error:
        raise Problem(409, "规则库有错误，仍使用当前版本 (the rulebook has errors; the live version stays)",
                      kind="rulebook-invalid", rulebook=found.auditor.rulebook_hash,
                      errors=_errors(error, root)) from None  # fmt: skip
    answer["workers"] = "all" if tell_siblings() else "this"
    request.state.outcome = "reloaded"
    return JSONResponse(answer)


def on_sighup(found: Services) -> Any:
    """Install the worker's SIGHUP handler (a reload in a thread: compiling takes seconds and the event
    loop goes on answering); returns an undo, or None where signals cannot be handled (not the main
    thread, e.g. an in-process test client)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None

    def reload_in_thread() -> None:
        with contextlib.suppress(RulebookError):  # logged and counted; the live version stays
            reload_rulebook(found, "sighup")

    def handler() -> None:
        threading.Thread(target=reload_in_thread, name="rx-audit-reload", daemon=True).start()

    try:
        loop.add_signal_handler(signal.SIGHUP, handler)
    except (ValueError, RuntimeError, NotImplementedError, AttributeError):
        return None
    return lambda: loop.remove_signal_handler(signal.SIGHUP)
