"""Replay a past batch through the audit into the review queue — streamed, resumable, idempotent.

* Streams JSON Lines (or a JSON array, through :func:`rx_audit.io.iter_records`): memory stays
  flat whatever the file size; JSON Lines are stored as received, byte for byte.
* Chunks of ``chunk_size`` records are audited and committed in one transaction each (in
  ``workers`` processes when > 1, each with its own compiled rulebook and connection; the
  database serialises the commits). A ``kill -9`` loses at most the chunks in flight; re-running
  the same command skips every (prescription id, version) already audited by the same rulebook,
  and storing is idempotent anyway, so each prescription is stored exactly once.
* Unreadable records are counted and stored by batch and line (``rx_replay_error``); the batch
  goes on. So does a record that fails in any other way — an unexpected exception while auditing
  it, or while storing it (the chunk is then stored record by record and the one that cannot be
  stored becomes an error row with its line and id). Only a failure of the database itself (down,
  locked, read-only, full: :class:`~rx_audit.errors.DatabaseError`) stops the replay, with one line.
* The same prescription id twice: the same content is a *repeat* (counted, nothing stored), other
  content a *new version* (stored, audited, queued when flagged) — ``repeats`` / ``new_versions``.
  A resumed run skips the lines a previous run of the same file stored (by id, content and line).
* Schema: replay is an explicit batch-write command, so on a *fresh* database (no queue tables:
  a new SQLite file, an empty schema) it runs the migrations itself (:func:`prepare_database`);
  a database at an older revision is refused like ``ReviewQueue`` does — run
  ``rx-audit queue migrate`` — because upgrading a live queue is the operator's decision.
* :func:`compare` audits a batch with two rulebooks and reports which prescriptions change
  verdict and which rules cause it (nothing is written to a database).
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import io
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rx_audit.errors import DatabaseError, PrescriptionError, RxAuditError
from rx_audit.models import RecordError, parse_prescription
from rx_audit.queue import PreparedRecord, ReviewQueue, StoreOutcome, content_hash, migrate, prepare_record

DEFAULT_CHUNK = 500

# --- reading ---------------------------------------------------------------------------------------


def _is_array(path: Path) -> bool:
    with open(path, "rb") as stream:
        while True:
            block = stream.read(4096)
            if not block:
                return False
            stripped = block.lstrip(b"\xef\xbb\xbf \t\r\n")
            if stripped:
                return stripped[:1] == b"["


def iter_raw(path: str | Path) -> Iterator[tuple[int, Any, int]]:
    """``(line, record, bytes_read)``: a JSON Lines line as text (parsed later, in the worker), or
    for a JSON array the decoded element (or a RecordError)."""
    path = Path(path)
    if _is_array(path):
        from rx_audit.io import iter_records

        with open(path, "rb") as binary:
            text = io.TextIOWrapper(binary, encoding="utf-8-sig")
            for line, record in iter_records(text):
                yield line, record, binary.tell()
        return
    with open(path, "rb") as binary:
        position = 0
        for number, raw in enumerate(binary, start=1):
            position += len(raw)
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                yield number, raw.decode("utf-8"), position
            except UnicodeDecodeError as error:
                yield (
                    number,
                    RecordError(line=number, error=f"第{number}行不是UTF-8 (not UTF-8): {error.reason}"),
                    position,
                )


def _chunks(path: str | Path, size: int) -> Iterator[tuple[list[tuple[int, Any]], int]]:
    chunk: list[tuple[int, Any]] = []
    position = 0
    for line, record, position in iter_raw(path):
        chunk.append((line, record))
        if len(chunk) >= size:
            yield chunk, position
            chunk = []
    if chunk:
        yield chunk, position


# --- auditing in a worker ------------------------------------------------------------------------


def load_factory(spec: str | None, rules: str | Path) -> Callable[[], Any]:
    """The auditor factory: ``module:function`` (tests, plug-ins) or the rulebook at ``rules``."""
    if spec:
        module, _, name = spec.partition(":")
        factory = getattr(importlib.import_module(module), name)
        return lambda: factory(rules)

    def build() -> Any:
        from rx_audit.engine import Auditor

        return Auditor.from_path(rules)

    return build


_STATE: dict[str, Any] = {}


def _init_worker(
    url: str | None,
    rules: str,
    factory_spec: str | None,
    compare_rules: str | None = None,
    source: str | None = None,
    write_lock: Any = None,
) -> None:
    _STATE.clear()
    _STATE["source"] = source
    _STATE["write_lock"] = write_lock
    _STATE["auditor"] = load_factory(factory_spec, rules)()
    if compare_rules is not None:
        _STATE["auditor_new"] = load_factory(factory_spec, compare_rules)()
    _STATE["queue"] = ReviewQueue(url) if url else None


@dataclass
class ChunkResult:
    rulebook: str
    prepared: list[PreparedRecord] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)
    skipped: int = 0
    read: int = 0
    stored: int = 0
    flagged: int = 0
    repeats: int = 0
    new_versions: int = 0


def _decode(line: int, record: Any) -> tuple[Any, Any]:
    """(data as received, parsed JSON value) or raise RecordError-like PrescriptionError."""
    if isinstance(record, str):
        try:
            return record, json.loads(record)
        except json.JSONDecodeError as error:
            raise PrescriptionError(
                None, None, f"第{line}行不是合法的JSON (not JSON): {error.msg}", line=line
            ) from None
    return record, record


def _key(value: Any) -> tuple[str, int] | None:
    if isinstance(value, dict) and value.get("id") not in (None, ""):
        version = value.get("version", 1)
        return str(value["id"]), version if isinstance(version, int) else 1
    return None


def _audit_chunk(chunk: list[tuple[int, Any]]) -> ChunkResult:
    auditor = _STATE["auditor"]
    queue: ReviewQueue | None = _STATE.get("queue")
    out = ChunkResult(rulebook=auditor.rulebook_hash, read=len(chunk))
    decoded: list[tuple[int, Any, Any]] = []
    for line, record in chunk:
        if isinstance(record, RecordError):
            out.errors.append(record)
            continue
        try:
            data, value = _decode(line, record)
        except PrescriptionError as error:
            out.errors.append(RecordError(id=None, line=line, field=None, error=error.message))
            continue
        decoded.append((line, data, value))
    done: set[int] = set()
    if queue is not None and _STATE.get("source"):
        resumable = []
        for line, _, value in decoded:
            key = _key(value)
            if key is not None:
                with contextlib.suppress(Exception):  # an odd value is audited, and reported there
                    resumable.append((key[0], content_hash(value), line))
        done = queue.replayed(_STATE["source"], out.rulebook, resumable)
    for line, data, value in decoded:
        if line in done:
            out.skipped += 1
            continue
        try:
            prescription = parse_prescription(value, line=line)
            result = auditor.audit(prescription)
            record = prepare_record(value, result, parsed=prescription, raw=data if isinstance(data, str) else None)
            record.extra["line"] = line
            out.prepared.append(record)
        except PrescriptionError as error:
            out.errors.append(RecordError(id=error.prescription_id, line=line, field=error.field, error=error.message))
        except RxAuditError as error:
            out.errors.append(RecordError(id=_record_id(value), line=line, error=str(error)))
        except Exception as error:  # one record never stops a batch: it becomes its error row
            out.errors.append(
                RecordError(id=_record_id(value), line=line, error=f"审核失败 (audit failed): {_describe(error)}")
            )
    # Each worker commits its own chunk (one transaction): the database serialises the writes,
    # the Python work of building them runs in parallel. Idempotent, so order does not matter.
    if queue is not None and _STATE.get("source"):
        # Workers take turns through a process lock: SQLite's busy handler would otherwise sleep
        # up to 100 ms per retry while another worker commits.
        with _STATE["write_lock"] or contextlib.nullcontext():
            outcomes = _store(queue, out)
            if out.errors:
                queue.record_errors(_STATE["source"], out.errors)
        for outcome in outcomes:
            if outcome.kind == "repeat":
                out.repeats += 1
                continue
            out.stored += 1
            out.new_versions += outcome.kind == "new_version"
            out.flagged += outcome.flagged
        out.prepared = []
    return out


def _record_id(value: Any) -> str | None:
    key = _key(value)
    return key[0] if key else None


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}"[:500]


def _store(queue: ReviewQueue, out: ChunkResult) -> list[StoreOutcome]:
    """Store the chunk in one transaction; if that fails for anything but the database itself, store
    it record by record so only the records that cannot be stored become error rows."""
    if not out.prepared:
        return []
    source = _STATE["source"]
    try:
        return queue.store_prepared(out.prepared, source=source, actor="replay")
    except DatabaseError:
        raise
    except Exception:
        pass
    outcomes = []
    for record in out.prepared:
        try:
            outcomes.extend(queue.store_prepared([record], source=source, actor="replay"))
        except DatabaseError:
            raise
        except Exception as error:
            out.errors.append(
                RecordError(
                    id=record.key[0],
                    line=record.extra.get("line"),
                    error=f"无法存储 (cannot store): {_describe(error)}",
                )
            )
    return outcomes


# --- the replay ------------------------------------------------------------------------------------


@dataclass
class ReplayRun:
    """What this run did (the batch as a whole is in ``summary``)."""

    file: str
    source: str
    read: int = 0
    stored: int = 0
    skipped: int = 0
    errors: int = 0
    repeats: int = 0  # the same id and content as a record stored before: nothing stored
    new_versions: int = 0  # the same id, other content: stored as the next version (counted in stored)
    flagged: int = 0
    seconds: float = 0.0
    rulebook: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.read / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate": round(self.rate, 1)}


def prepare_database(url: str) -> bool:
    """Run the migrations when the database is fresh (no queue tables at all); True when it did.

    Called before any worker forks (it opens and disposes its own engine)."""
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import NullPool

    from rx_audit.queue import _classify, schema_version

    if url.startswith("sqlite"):
        from rx_audit.queue import _sqlite_file

        path = _sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            fresh = schema_version(connection) is None and not inspect(connection).has_table("rx_prescription")
    except DBAPIError as error:
        failure, _ = _classify(error, url)
        if failure is None:
            raise
        raise failure from error
    finally:
        engine.dispose()
    if fresh:
        migrate(url)
    return fresh


def batch_source(path: str | Path) -> str:
    """The batch's name in the database: the file's absolute path."""
    return "replay:" + str(Path(path).resolve())


class _Pipeline:
    """Ordered, bounded fan-out of chunks to worker processes (or in-process for one worker)."""

    def __init__(self, workers: int, initargs: tuple[Any, ...]):
        self.workers = workers
        self.pool = None
        if workers > 1:
            context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
            initargs = (*initargs, context.Lock()) if len(initargs) == 5 else initargs
            self.pool = context.Pool(workers, initializer=_init_worker, initargs=initargs)
        else:
            _init_worker(*initargs)

    def map(
        self, chunks: Iterator[tuple[list[tuple[int, Any]], int]], func: Callable[[Any], Any]
    ) -> Iterator[tuple[Any, int]]:
        if self.pool is None:
            for chunk, position in chunks:
                yield func(chunk), position
            return
        pending: collections.deque[tuple[Any, int]] = collections.deque()
        limit = self.workers * 3
        for chunk, position in chunks:
            pending.append((self.pool.apply_async(func, (chunk,)), position))
            if len(pending) >= limit:
                result, at = pending.popleft()
                yield result.get(), at
        while pending:
            result, at = pending.popleft()
            yield result.get(), at

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
        _STATE.clear()


def _progress(enabled: bool, total_bytes: int, description: str) -> Any:
    if not enabled:
        return None
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn(
            "{task.fields[records]:,} 条 · {task.fields[rate]:,.0f}/s · "
            "标记 {task.fields[flagged]:,} · 错误 {task.fields[errors]:,}"
        ),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        transient=False,
    )
    progress.start()
    task = progress.add_task(description, total=max(total_bytes, 1), records=0, rate=0.0, flagged=0, errors=0)
    return progress, task


def replay(
    path: str | Path,
    db_url: str,
    *,
    rules: str | Path = "rules",
    workers: int = 1,
    chunk_size: int = DEFAULT_CHUNK,
    progress: bool = False,
    auditor_factory: str | None = None,
) -> ReplayRun:
    """Replay ``path`` into the queue at ``db_url``; resumable, idempotent. This run + the batch summary."""
    path = Path(path)
    run = ReplayRun(file=str(path), source=batch_source(path))
    started = time.perf_counter()
    prepare_database(db_url)
    # The pool forks before this process opens any database connection.
    pipeline = _Pipeline(max(1, workers), (db_url, str(rules), auditor_factory, None, run.source))
    queue = ReviewQueue(db_url)
    bar = _progress(progress, path.stat().st_size, path.name)
    flagged = 0
    try:
        for result, position in pipeline.map(_chunks(path, chunk_size), _audit_chunk):
            run.rulebook = result.rulebook
            run.read += result.read
            run.stored += result.stored
            run.skipped += result.skipped
            run.errors += len(result.errors)
            run.repeats += result.repeats
            run.new_versions += result.new_versions
            flagged += result.flagged
            if bar is not None:
                elapsed = time.perf_counter() - started
                bar[0].update(
                    bar[1],
                    completed=position,
                    records=run.read,
                    rate=run.read / max(elapsed, 1e-9),
                    flagged=flagged,
                    errors=run.errors,
                )
    finally:
        if bar is not None:
            bar[0].stop()
        pipeline.close()
    run.seconds = time.perf_counter() - started
    run.flagged = flagged
    if run.rulebook is None:
        run.rulebook = load_factory(auditor_factory, rules)().rulebook_hash
    run.summary = queue.batch_summary(run.source, run.rulebook)
    queue.close()
    return run


# --- what-if: two rulebooks --------------------------------------------------------------------------


@dataclass
class CompareResult:
    file: str
    old_rulebook: str = ""
    new_rulebook: str = ""
    total: int = 0
    errors: int = 0
    changed: int = 0
    newly_flagged: int = 0
    no_longer_flagged: int = 0
    severity_changed: int = 0
    old_flagged: int = 0
    new_flagged: int = 0
    rules_added: dict[str, int] = field(default_factory=dict)  # fires with the new rules only
    rules_removed: dict[str, int] = field(default_factory=dict)  # fired with the old rules only
    changes: list[dict[str, Any]] = field(default_factory=list)  # the first ``keep`` changed prescriptions
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _verdict(result: Any) -> tuple[bool, str | None, set[str]]:
    severity = result.severity.value if result.severity is not None else None
    return bool(result.flagged), severity, {f.rule for f in result.findings}


def _compare_chunk(chunk: list[tuple[int, Any]]) -> dict[str, Any]:
    old, new = _STATE["auditor"], _STATE["auditor_new"]
    rows: list[dict[str, Any]] = []
    errors = 0
    for line, record in chunk:
        if isinstance(record, RecordError):
            errors += 1
            continue
        try:
            _, value = _decode(line, record)
            prescription = parse_prescription(value, line=line)
            a_flag, a_sev, a_rules = _verdict(old.audit(prescription))
            b_flag, b_sev, b_rules = _verdict(new.audit(prescription))
        except RxAuditError:
            errors += 1
            continue
        rows.append(
            {
                "id": prescription.id,
                "line": line,
                "old": (a_flag, a_sev),
                "new": (b_flag, b_sev),
                "added": sorted(b_rules - a_rules),
                "removed": sorted(a_rules - b_rules),
            }
        )
    return {"old": old.rulebook_hash, "new": new.rulebook_hash, "rows": rows, "errors": errors, "read": len(chunk)}


def compare(
    path: str | Path,
    old_rules: str | Path,
    new_rules: str | Path,
    *,
    workers: int = 1,
    chunk_size: int = DEFAULT_CHUNK,
    progress: bool = False,
    auditor_factory: str | None = None,
    keep: int = 5000,
) -> CompareResult:
    """Audit ``path`` with two rulebooks: which prescriptions change verdict, and which rules cause it."""
    path = Path(path)
    out = CompareResult(file=str(path))
    added: collections.Counter[str] = collections.Counter()
    removed: collections.Counter[str] = collections.Counter()
    started = time.perf_counter()
    pipeline = _Pipeline(max(1, workers), (None, str(old_rules), auditor_factory, str(new_rules)))
    bar = _progress(progress, path.stat().st_size, f"{path.name} (compare)")
    try:
        for result, position in pipeline.map(_chunks(path, chunk_size), _compare_chunk):
            out.old_rulebook, out.new_rulebook = result["old"], result["new"]
            out.errors += result["errors"]
            for row in result["rows"]:
                out.total += 1
                (a_flag, a_sev), (b_flag, b_sev) = row["old"], row["new"]
                out.old_flagged += a_flag
                out.new_flagged += b_flag
                if a_flag == b_flag and a_sev == b_sev:
                    continue
                out.changed += 1
                out.newly_flagged += (not a_flag) and b_flag
                out.no_longer_flagged += a_flag and not b_flag
                out.severity_changed += a_sev != b_sev
                added.update(row["added"])
                removed.update(row["removed"])
                if len(out.changes) < keep:
                    out.changes.append(
                        {
                            "id": row["id"],
                            "line": row["line"],
                            "old_flagged": a_flag,
                            "old_severity": a_sev,
                            "new_flagged": b_flag,
                            "new_severity": b_sev,
                            "rules_added": row["added"],
                            "rules_removed": row["removed"],
                        }
                    )
            if bar is not None:
                elapsed = time.perf_counter() - started
                bar[0].update(
                    bar[1],
                    completed=position,
                    records=out.total + out.errors,
                    rate=(out.total + out.errors) / max(elapsed, 1e-9),
                    flagged=out.changed,
                    errors=out.errors,
                )
    finally:
        if bar is not None:
            bar[0].stop()
        pipeline.close()
    out.rules_added = dict(added.most_common())
    out.rules_removed = dict(removed.most_common())
    out.seconds = time.perf_counter() - started
    return out
