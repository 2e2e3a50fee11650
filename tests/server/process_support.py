"""Running ``rx-audit serve`` for real in a test: a free port on 127.0.0.1, the process in its own
session, its log in a file, readiness polled with a generous cap (the tests never measure time)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

RX_AUDIT = str(Path(sys.executable).with_name("rx-audit"))
CAP = 300.0  # seconds: a cap on a slow, shared machine; never an assertion about speed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], what: str, process: subprocess.Popen | None = None,
               cap: float = CAP) -> Any:  # fmt: skip
    deadline = time.monotonic() + cap
    pause = 0.05
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the server exited with {process.returncode}")
        time.sleep(pause)
        pause = min(pause * 1.5, 1.0)
    raise AssertionError(f"{what}: not within {cap} s")


@dataclass
class Served:
    base: str
    process: subprocess.Popen
    log: Path
    port: int

    def ready(self) -> dict[str, Any] | None:
        try:
            answer = httpx.get(f"{self.base}/readyz", timeout=10)
        except httpx.HTTPError:
            return None
        return answer.json() if answer.status_code == 200 else None

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def environment(**extra: str) -> dict[str, str]:
    """The test's environment without any RX_AUDIT_ setting but the tests' own (and ``extra``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RX_AUDIT_") or k.startswith("RX_AUDIT_TEST")}
    env.update(extra)
    return env


def start(args: list[str], log: Path, *, port: int | None = None, env: dict[str, str] | None = None,
          preexec_fn: Callable[[], Any] | None = None) -> Served:
    """Start ``rx-audit serve --host 127.0.0.1 --port P *args`` and wait until /readyz answers 200
    (``preexec_fn`` runs in the child before it starts: the benchmark unpins its CPU)."""
    port = port or free_port()
    handle = open(log, "a", encoding="utf-8")  # noqa: SIM115 (the child writes it while it runs)
    process = subprocess.Popen([RX_AUDIT, "serve", "--host", "127.0.0.1", "--port", str(port), *args],
                               stdout=handle, stderr=subprocess.STDOUT, env=env or environment(),
                               start_new_session=True, preexec_fn=preexec_fn)  # fmt: skip
    handle.close()
    served = Served(f"http://127.0.0.1:{port}", process, log, port)
    try:
        wait_until(served.ready, "rx-audit serve ready", process)
    except BaseException:
        stop(served)
        raise
    return served


def stop(served: Served) -> None:
    """SIGTERM, then SIGKILL to the whole session if it does not end (no stray workers left)."""
    process = served.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):  # workers orphaned by a SIGKILL of the
        os.killpg(process.pid, signal.SIGKILL)  # supervisor: the session still names them


@contextmanager
def serving(args: list[str], log: Path, **options: Any) -> Iterator[Served]:
    served = start(args, log, **options)
    try:
        yield served
    finally:
        stop(served)
