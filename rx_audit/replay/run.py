"""The replay of one batch file into the review queue: resumable, idempotent; this run's figures and
the batch's summary (:meth:`ReviewQueue.batch_summary`, the same statistics as the queue's)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rx_audit.queue import ReviewQueue, migrate
from rx_audit.replay.pipeline import Pipeline, progress_bar
from rx_audit.replay.reading import DEFAULT_CHUNK, chunks
from rx_audit.replay.workers import ChunkResult, audit_chunk, load_factory


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

    from rx_audit.queue.database import as_database_error, sqlite_file
    from rx_audit.queue.migrate import schema_version

    if url.startswith("sqlite"):
        path = sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            fresh = schema_version(connection) is None and not inspect(connection).has_table("rx_prescription")
    except DBAPIError as error:
        failure = as_database_error(error, url)
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


def _add(run: ReplayRun, result: ChunkResult) -> None:
    run.rulebook = result.rulebook
    run.read += result.read
    run.stored += result.stored
    run.skipped += result.skipped
    run.errors += len(result.errors)
    run.repeats += result.repeats
    run.new_versions += result.new_versions
    run.flagged += result.flagged


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
    pipeline = Pipeline(max(1, workers), (db_url, str(rules), auditor_factory, None, run.source))
    queue = ReviewQueue(db_url)
    bar = progress_bar(progress, path.stat().st_size, path.name)
    try:
        for result, position in pipeline.map(chunks(path, chunk_size), audit_chunk):
            _add(run, result)
            if bar is not None:
                rate = run.read / max(time.perf_counter() - started, 1e-9)
                bar[0].update(
                    bar[1], completed=position, records=run.read, rate=rate, flagged=run.flagged, errors=run.errors
                )
    finally:
        if bar is not None:
            bar[0].stop()
        pipeline.close()
    run.seconds = time.perf_counter() - started
    if run.rulebook is None:
        run.rulebook = load_factory(auditor_factory, rules)().rulebook_hash
    run.summary = queue.batch_summary(run.source, run.rulebook)
    queue.close()
    return run
