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

The package: :mod:`.reading` (the file), :mod:`.workers` (auditing and storing a chunk),
:mod:`.pipeline` (worker processes, progress), :mod:`.run` (:func:`replay`), :mod:`.compare`.
"""

from __future__ import annotations

from rx_audit.replay.compare import CompareResult, compare
from rx_audit.replay.reading import DEFAULT_CHUNK, iter_raw
from rx_audit.replay.run import ReplayRun, batch_source, prepare_database, replay
from rx_audit.replay.workers import ChunkResult, audit_chunk, load_factory

__all__ = [
    "DEFAULT_CHUNK",
    "ChunkResult",
    "CompareResult",
    "ReplayRun",
    "audit_chunk",
    "batch_source",
    "compare",
    "iter_raw",
    "load_factory",
    "prepare_database",
    "replay",
]
