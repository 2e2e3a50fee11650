"""检查 Check a rulebook folder *outside* the server process, with a time limit.

Loading a rulebook is CPU-bound Python: a custom ``in`` list of ≥ 506 values once made it run
for ever, and because the admin page loaded it in the Streamlit process (holding the GIL), the
whole server froze for every pharmacist. So the admin page runs ``rx-audit rules check DIR`` and
``rx-audit rules test DIR`` in a child process (its own session, so the whole process group is
killed on timeout), shows their output as plain text, and only a rulebook whose check finished
and passed may be activated. A fingerprint of the folder's files is taken with the check and
re-taken before activation: a folder changed since its check must be checked again (the in-process
reload must only ever load content that is known to load).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_TIMEOUT_SECONDS = 120.0
MAX_OUTPUT_CHARS = 20_000
MAX_FILES = 5_000
MAX_BYTES = 64 * 1024 * 1024
_HASH = re.compile(r"sha256:[0-9a-f]{64}")


def cli_command() -> list[str]:
    """How to run ``rx-audit``: the console script next to this interpreter, else ``python -m``.

    Tests replace this function (e.g. with a command that never ends) to prove the time limit."""
    script = Path(sys.executable).with_name("rx-audit")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "rx_audit.cli"]


@dataclass
class CommandRun:
    args: list[str]
    returncode: int | None
    output: str
    timed_out: bool = False
    error: str | None = None  # could not start at all

    @property
    def ok(self) -> bool:
        return not self.timed_out and self.error is None and self.returncode == 0


@dataclass
class CheckReport:
    path: str
    runs: list[CommandRun] = field(default_factory=list)
    hash: str | None = None
    fingerprint: str | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    @property
    def timed_out(self) -> bool:
        return any(run.timed_out for run in self.runs)

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(run.ok for run in self.runs) and self.fingerprint is not None


def _run(args: list[str], timeout: float) -> CommandRun:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", "PYTHONIOENCODING": "utf-8"}
    try:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: a timeout kills it and anything it started
        )
    except OSError as error:
        return CommandRun(args, None, "", error=f"{type(error).__name__}: {error}")
    try:
        raw, _ = process.communicate(timeout=max(timeout, 0.1))
        timed_out = False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        raw, _ = process.communicate()
        timed_out = True
    text = (raw or b"").decode("utf-8", errors="replace")
    if len(text) > MAX_OUTPUT_CHARS:
        text = text[:MAX_OUTPUT_CHARS] + f"\n… ({len(text) - MAX_OUTPUT_CHARS} more characters)"
    return CommandRun(args, None if timed_out else process.returncode, text, timed_out=timed_out)


def fingerprint(path: str | Path) -> str | None:
    """A digest of every file under ``path`` (names and contents); None when it is not a folder or
    too big to be a rulebook (so pointing the page at ``/`` cannot make the server walk the disk)."""
    root = Path(path)
    if not root.is_dir():
        return None
    digest = hashlib.sha256()
    files = 0
    size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            file = Path(dirpath) / name
            if not file.is_file():
                continue
            files += 1
            try:
                data = file.read_bytes()
            except OSError:
                return None
            size += len(data)
            if files > MAX_FILES or size > MAX_BYTES:
                return None
            digest.update(str(file.relative_to(root)).encode("utf-8") + b"\0")
            digest.update(hashlib.sha256(data).digest())
    return "files:" + digest.hexdigest()


def check(path: str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> CheckReport:
    """``rules check`` then ``rules test`` on ``path``, both within ``timeout`` seconds in all."""
    report = CheckReport(path=path, timeout_seconds=timeout, fingerprint=fingerprint(path))
    deadline = time.monotonic() + timeout
    for sub in ("check", "test"):
        run = _run([*cli_command(), "rules", sub, path], deadline - time.monotonic())
        report.runs.append(run)
        if sub == "check":
            found = _HASH.findall(run.output)
            report.hash = found[-1] if found else None
        if not run.ok:
            break
    return report
