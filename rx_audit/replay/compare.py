"""What-if: audit a batch with two rulebooks and report which prescriptions change verdict and
which rules cause it (nothing is written to a database)."""

from __future__ import annotations

import collections
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rx_audit.contract import RecordError, parse_prescription
from rx_audit.errors import RxAuditError
from rx_audit.replay.pipeline import Pipeline, progress_bar
from rx_audit.replay.reading import DEFAULT_CHUNK, chunks
from rx_audit.replay.workers import STATE, decode


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
    old, new = STATE["auditor"], STATE["auditor_new"]
    rows: list[dict[str, Any]] = []
    errors = 0
    for line, record in chunk:
        if isinstance(record, RecordError):
            errors += 1
            continue
        try:
            _, value = decode(line, record)
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


def _tally(out: CompareResult, row: dict[str, Any], added: collections.Counter[str],
           removed: collections.Counter[str], keep: int) -> None:  # fmt: skip
    """Count one prescription audited with both rulebooks; keep it when its verdict changes."""
    out.total += 1
    (a_flag, a_sev), (b_flag, b_sev) = row["old"], row["new"]
    out.old_flagged += a_flag
    out.new_flagged += b_flag
    if a_flag == b_flag and a_sev == b_sev:
        return
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
    pipeline = Pipeline(max(1, workers), (None, str(old_rules), auditor_factory, str(new_rules)))
    bar = progress_bar(progress, path.stat().st_size, f"{path.name} (compare)")
    try:
        for result, position in pipeline.map(chunks(path, chunk_size), _compare_chunk):
            out.old_rulebook, out.new_rulebook = result["old"], result["new"]
            out.errors += result["errors"]
            for row in result["rows"]:
                _tally(out, row, added, removed, keep)
            if bar is not None:
                records = out.total + out.errors
                rate = records / max(time.perf_counter() - started, 1e-9)
                bar[0].update(
                    bar[1], completed=position, records=records, rate=rate, flagged=out.changed, errors=out.errors
                )
    finally:
        if bar is not None:
            bar[0].stop()
        pipeline.close()
    out.rules_added = dict(added.most_common())
    out.rules_removed = dict(removed.most_common())
    out.seconds = time.perf_counter() - started
    return out
