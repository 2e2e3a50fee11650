"""检查 Check a rulebook folder *outside* the server process, with a time limit.

Loading a rulebook is CPU-bound Python: a custom ``in`` list of ≥ 506 values once made it run
for ever, and because the admin page loaded it in the Streamlit process (holding the GIL), the
whole server froze for every pharmacist. So the admin page runs the check in a child process (its
own session, so the whole process group is killed on timeout) and only a rulebook whose check
finished and passed may be activated.

The check itself is the library's: the child (``python -m review_ui.rulebook_check DIR``, this
module) runs :func:`rx_audit.check_rulebook` — what ``rx-audit rules check`` and ``rules test`` do:
validation with file:line, registration in durable_rules, the examples written in the rule files —
and prints its report as one JSON document. Nothing of the check is re-implemented here.

A fingerprint of the folder's files is taken with the check and re-taken before activation: a
folder changed since its check must be checked again (the in-process reload must only ever load
content that is known to load).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT_SECONDS = 120.0
MAX_OUTPUT_CHARS = 20_000
MAX_FILES = 5_000
MAX_BYTES = 64 * 1024 * 1024
MAX_LISTED = 200  # errors / failed examples listed in the text shown to the admin


def check_command() -> list[str]:
    """How to run the check: this module, by this interpreter (so the same rx_audit is checked).

    Tests replace this function (e.g. with a command that never ends) to prove the time limit."""
    return [sys.executable, "-m", "review_ui.rulebook_check"]


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


@dataclass(frozen=True)
class ExampleFailure:
    """A rule-file example that did not pass (``rx_audit.ExampleOutcome``, as the child reported it)."""

    source: str
    name: str
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()  # "rule (severity) message"
    error: str | None = None


@dataclass(frozen=True)
class CheckResult:
    """What :func:`rx_audit.check_rulebook` found (its ``CheckReport``, read back from the child)."""

    ok: bool
    rulebook_hash: str | None
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    drugs: int
    rules: int
    twins: int
    rulesets: int
    examples_passed: int
    examples_failed: tuple[ExampleFailure, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckResult:
        failures = tuple(
            ExampleFailure(
                source=str(f.get("source", "")),
                name=str(f.get("name", "")),
                missing=tuple(str(m) for m in f.get("missing") or ()),
                unexpected=tuple(str(u) for u in f.get("unexpected") or ()),
                error=str(f["error"]) if f.get("error") else None,
            )
            for f in data.get("examples_failed") or ()
        )
        return cls(
            ok=bool(data.get("ok")),
            rulebook_hash=str(data["rulebook_hash"]) if data.get("rulebook_hash") else None,
            errors=tuple(str(e) for e in data.get("errors") or ()),
            warnings=tuple(str(w) for w in data.get("warnings") or ()),
            drugs=int(data.get("drugs") or 0),
            rules=int(data.get("rules") or 0),
            twins=int(data.get("twins") or 0),
            rulesets=int(data.get("rulesets") or 0),
            examples_passed=int(data.get("examples_passed") or 0),
            examples_failed=failures,
        )

    def text(self) -> str:
        """The report as plain text (shown in a code block, never as Markdown)."""
        lines: list[str] = []
        if self.errors:
            lines.append(f"ERROR {len(self.errors)} 个错误 errors")
            lines.extend(self.errors[:MAX_LISTED])
            if len(self.errors) > MAX_LISTED:
                lines.append(f"… ({len(self.errors) - MAX_LISTED} more)")
        else:
            lines.append(
                f"OK {self.drugs} drugs, {self.rules} rules (+{self.twins} missing-data twins) "
                f"in {self.rulesets} durable rulesets; {self.rulebook_hash}"
            )
        lines.extend(f"warning {w}" for w in self.warnings[:MAX_LISTED])
        for failure in self.examples_failed[:MAX_LISTED]:
            lines.append(f"FAIL {failure.source} {failure.name}")
            if failure.error:
                lines.append(f"     error: {failure.error}")
            if failure.missing:
                lines.append(f"     expected but not fired: {', '.join(failure.missing)}")
            lines.extend(f"     unexpected: {u}" for u in failure.unexpected)
        if not self.errors:
            lines.append(f"示例 examples: {self.examples_passed} passed, {len(self.examples_failed)} failed")
        return "\n".join(lines)


@dataclass
class CheckReport:
    path: str
    runs: list[CommandRun] = field(default_factory=list)
    hash: str | None = None
    fingerprint: str | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    result: CheckResult | None = None  # None: the child did not finish or did not report

    @property
    def timed_out(self) -> bool:
        return any(run.timed_out for run in self.runs)

    @property
    def ok(self) -> bool:
        return (
            bool(self.runs)
            and all(run.ok for run in self.runs)
            and self.result is not None
            and self.result.ok
            and self.fingerprint is not None
        )


def _limited(text: str) -> str:
    if len(text) > MAX_OUTPUT_CHARS:
        return text[:MAX_OUTPUT_CHARS] + f"\n… ({len(text) - MAX_OUTPUT_CHARS} more characters)"
    return text


def _run(args: list[str], timeout: float) -> tuple[CommandRun, bytes]:
    """Run ``args`` in its own process group; (the run with its stderr as output, its stdout)."""
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "PYTHONIOENCODING": "utf-8"}
    try:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: a timeout kills it and anything it started
        )
    except OSError as error:
        return CommandRun(args, None, "", error=f"{type(error).__name__}: {error}"), b""
    try:
        out, err = process.communicate(timeout=max(timeout, 0.1))
        timed_out = False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        timed_out = True
    text = _limited((err or b"").decode("utf-8", errors="replace"))
    return CommandRun(args, None if timed_out else process.returncode, text, timed_out=timed_out), out or b""


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
    """:func:`rx_audit.check_rulebook` on ``path`` in a child process, within ``timeout`` seconds."""
    report = CheckReport(path=path, timeout_seconds=timeout, fingerprint=fingerprint(path))
    run, stdout = _run([*check_command(), path], timeout)
    report.runs.append(run)
    if run.timed_out or run.error:
        return report
    try:
        data = json.loads(stdout.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        data = None
    if isinstance(data, dict) and data.get("path") == path:
        report.result = CheckResult.from_json(data)
        report.hash = report.result.rulebook_hash
        run.output = _limited("\n".join(part for part in (report.result.text(), run.output.strip()) if part))
    return report


# --- the child ----------------------------------------------------------------------------------


def _report_json(path: str) -> dict[str, Any]:
    from rx_audit import check_rulebook

    report = check_rulebook(path)
    failed = []
    for outcome in report.examples_failed:
        findings = outcome.result.findings if outcome.result is not None else []
        failed.append(
            {
                "source": outcome.example.source,
                "name": outcome.example.name,
                "missing": list(outcome.missing),
                "unexpected": [
                    f"{f.rule} ({f.severity}) {f.message}" for f in findings if f.rule in outcome.unexpected
                ]
                or list(outcome.unexpected),
                "error": outcome.error,
            }
        )
    return {
        "path": path,
        "ok": report.ok,
        "rulebook_hash": report.rulebook_hash,
        "errors": list(report.errors),
        "warnings": list(report.warnings),
        "drugs": report.drugs,
        "rules": report.rules,
        "twins": report.twins,
        "rulesets": report.rulesets,
        "examples_passed": report.examples_passed,
        "examples_failed": failed,
    }


def main(argv: Sequence[str]) -> int:
    """``python -m review_ui.rulebook_check DIR``: the report as JSON on stdout; exit 1 unless it passed."""
    if len(argv) != 1:
        print("usage: python -m review_ui.rulebook_check RULEBOOK_DIR", file=sys.stderr)
        return 2
    data = _report_json(argv[0])
    sys.stdout.write(json.dumps(data, ensure_ascii=False))
    sys.stdout.flush()
    return 0 if data["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
