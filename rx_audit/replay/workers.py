"""Auditing a chunk in a worker (a process of the pool, or this one): decode, skip what a previous
run stored, audit, prepare the rows, and store the chunk in one transaction. One record never
stops a batch — it becomes its error row; only a failure of the database itself stops the replay.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rx_audit.contract import RecordError, parse_prescription
from rx_audit.errors import DatabaseError, PrescriptionError, RxAuditError
from rx_audit.queue import PreparedRecord, ReviewQueue, StoreOutcome, content_hash, prepare_record


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


STATE: dict[str, Any] = {}
# Auditors the parent loaded before the pool forked: every worker shares their pages copy-on-write
# instead of compiling and registering the rulebook again (the parent froze them out of the
# cyclic collector's reach, so the workers' collections do not copy them either).
PRELOADED: dict[str, Any] = {}


def preload(rules: str, factory_spec: str | None, compare_rules: str | None = None) -> None:
    """Load the auditor(s) in this process, for workers forked after it."""
    PRELOADED.clear()
    PRELOADED["auditor"] = load_factory(factory_spec, rules)()
    if compare_rules is not None:
        PRELOADED["auditor_new"] = load_factory(factory_spec, compare_rules)()


def init_worker(
    url: str | None,
    rules: str,
    factory_spec: str | None,
    compare_rules: str | None = None,
    source: str | None = None,
    write_lock: Any = None,
) -> None:
    STATE.clear()
    STATE["source"] = source
    STATE["write_lock"] = write_lock
    STATE["auditor"] = PRELOADED.get("auditor") or load_factory(factory_spec, rules)()
    if compare_rules is not None:
        STATE["auditor_new"] = PRELOADED.get("auditor_new") or load_factory(factory_spec, compare_rules)()
    STATE["queue"] = ReviewQueue(url) if url else None


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


def decode(line: int, record: Any) -> tuple[Any, Any]:
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


def audit_chunk(chunk: list[tuple[int, Any]]) -> ChunkResult:
    """Audit one chunk of ``(line, record)``; in a replay (a queue and a batch source) store it too."""
    auditor = STATE["auditor"]
    queue: ReviewQueue | None = STATE.get("queue")
    source: str | None = STATE.get("source")
    out = ChunkResult(rulebook=auditor.rulebook_hash, read=len(chunk))
    decoded = _decode_all(chunk, out)
    done = _done_lines(queue, source, out.rulebook, decoded) if queue is not None and source else set()
    readable: list[tuple[int, Any, Any, Any]] = []
    for line, data, value in decoded:
        if line in done:
            out.skipped += 1
            continue
        with _as_record_error(line, value, out):
            readable.append((line, data, value, parse_prescription(value, line=line)))
    results = audit_all(auditor, [prescription for *_, prescription in readable])
    for (line, data, value, prescription), result in zip(readable, results, strict=True):
        with _as_record_error(line, value, out):
            if isinstance(result, BaseException):
                raise result
            record = prepare_record(value, result, parsed=prescription, raw=data if isinstance(data, str) else None)
            record.extra["line"] = line
            out.prepared.append(record)
    if queue is not None and source:
        _commit(queue, source, out)
    return out


def _decode_all(chunk: list[tuple[int, Any]], out: ChunkResult) -> list[tuple[int, Any, Any]]:
    """``(line, data as received, JSON value)`` of the readable records; the others become errors."""
    decoded: list[tuple[int, Any, Any]] = []
    for line, record in chunk:
        if isinstance(record, RecordError):
            out.errors.append(record)
            continue
        try:
            data, value = decode(line, record)
        except PrescriptionError as error:
            out.errors.append(RecordError(id=None, line=line, field=None, error=error.message))
            continue
        decoded.append((line, data, value))
    return decoded


def _done_lines(queue: ReviewQueue, source: str, rulebook: str, decoded: list[tuple[int, Any, Any]]) -> set[int]:
    """The lines a previous run of this batch already stored with this rulebook (a resumed run skips them)."""
    resumable = []
    for line, _, value in decoded:
        key = _key(value)
        if key is not None:
            with contextlib.suppress(Exception):  # an odd value is audited, and reported there
                resumable.append((key[0], content_hash(value), line))
    return queue.replayed(source, rulebook, resumable)


def audit_all(auditor: Any, prescriptions: list[Any]) -> list[Any]:
    """Results in order: the engine's batch path when it has one (an auditor plug-in may not),
    else one at a time; a failure becomes that record's exception, never the chunk's."""
    audit_many = getattr(auditor, "audit_many", None)
    if audit_many is not None:
        try:
            return list(audit_many(prescriptions))
        except Exception:  # each record is audited alone below, its error reported there
            pass
    results: list[Any] = []
    for prescription in prescriptions:
        try:
            results.append(auditor.audit(prescription))
        except Exception as error:
            results.append(error)
    return results


@contextlib.contextmanager
def _as_record_error(line: int, value: Any, out: ChunkResult) -> Iterator[None]:
    """One record never stops a batch: what goes wrong with it becomes its error row."""
    try:
        yield
    except PrescriptionError as error:
        out.errors.append(RecordError(id=error.prescription_id, line=line, field=error.field, error=error.message))
    except RxAuditError as error:
        out.errors.append(RecordError(id=_record_id(value), line=line, error=str(error)))
    except Exception as error:
        out.errors.append(
            RecordError(id=_record_id(value), line=line, error=f"审核失败 (audit failed): {_describe(error)}")
        )


def _commit(queue: ReviewQueue, source: str, out: ChunkResult) -> None:
    """Each worker commits its own chunk (one transaction): the database serialises the writes, the
    Python work of building them runs in parallel. Idempotent, so order does not matter. Workers take
    turns through a process lock: SQLite's busy handler would otherwise sleep up to 100 ms per retry
    while another worker commits."""
    with STATE["write_lock"] or contextlib.nullcontext():
        outcomes = _store(queue, source, out)
        if out.errors:
            queue.record_errors(source, out.errors)
    for outcome in outcomes:
        if outcome.kind == "repeat":
            out.repeats += 1
            continue
        out.stored += 1
        out.new_versions += outcome.kind == "new_version"
        out.flagged += outcome.flagged
    out.prepared = []


def _record_id(value: Any) -> str | None:
    key = _key(value)
    return key[0] if key else None


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}"[:500]


def _store(queue: ReviewQueue, source: str, out: ChunkResult) -> list[StoreOutcome]:
    """Store the chunk in one transaction; if that fails for anything but the database itself, store
    it record by record so only the records that cannot be stored become error rows."""
    if not out.prepared:
        return []
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
