"""The durable_rules adapter: the only module that imports durable_rules.

How durable_rules 2.0.28 is driven, and why (each point measured on this project's machine):

* Facts, not events: ``assert`` fires *every* matching rule, where ``post`` consumes an event
  after the first. Each audit asserts its facts and retracts the same JSON in ``finally``, in one
  session per ruleset, so nothing of one prescription is left for the next and memory stays flat.
* Small rulesets, dispatched: a ruleset scans its rules one by one (≈53 ns per rule per fact)
  and breaks at ~512 rule paths, so the compiler writes one ruleset per drug, one per drug or
  class for pairs of items, and global ones; a fact only visits the rulesets that concern it.
* The engine's C API directly (``durable_rules_engine``), not ``durable.engine.Host``: a Host
  starts two timer threads that poll every ruleset and may run our actions on their own thread
  (observed: ``post`` returning before its action ran), and ``Host.assert_facts`` raises
  ``MessageNotHandled`` when the *last* fact matched nothing — dropping the actions of the facts
  before it. Here the fired rules of a batch are drained with ``start_action_for_state`` /
  ``complete_and_start_action`` on the caller's thread, under one lock per process (the C code
  never releases the GIL, so the lock costs no parallelism).
* Registration now and then fails with error 102 for a valid ruleset (about 1 in 200): retried
  under a fresh name.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections import defaultdict
from typing import Any

import durable_rules_engine as durable
import orjson

from rx_audit.errors import EngineError
from rx_audit.rulebook import Rulebook

logger = logging.getLogger("rx_audit")

_GENERATIONS = itertools.count(1)
# One lock for every durable_rules call in the process: the engine is a process-wide C library.
DURABLE_LOCK = threading.RLock()

# List fields whose values a fact carries only where some rule of the ruleset looks for them.
_FILTERED_LISTS = ("dx", "allergies", "co")


class Registered:
    """One rulebook's rulesets registered in durable_rules, under names unique in the process."""

    def __init__(self, rulebook: Rulebook):
        self.rulebook = rulebook
        self.generation = next(_GENERATIONS)
        self.handles: dict[str, int] = {}
        self.shards: dict[str, list[str]] = defaultdict(list)
        self.closed = False
        self.fields = {name: tuple(sorted(fields)) for name, fields in rulebook.fields_read().items()}
        self.lists = {name: rulebook.list_vocabulary(name) for name in _FILTERED_LISTS}
        definitions = rulebook.ruleset_definitions()
        with DURABLE_LOCK:
            for name, definition in definitions.items():
                self.handles[name] = self._create(name, json.dumps(definition, ensure_ascii=False))
                self.shards[name.split("#", 1)[0]].append(name)

    def _create(self, name: str, payload: str) -> int:
        """Register one ruleset, retrying under a fresh name when durable_rules refuses it.

        durable_rules 2.0.28 now and then refuses a valid ruleset with error 102, depending on
        the rulesets registered before it and on the name (about 1 in 200 here); the same
        definition under another name is accepted. A definition refused 20 times is an error.
        """
        last: Exception | None = None
        for attempt in range(20):
            try:
                return int(durable.create_ruleset(f"rx{self.generation}:{name}~{attempt}", payload))
            except Exception as error:
                last = error
        self.close()
        raise EngineError(f"durable_rules refused ruleset {name}: {last}")

    def has(self, logical: str) -> bool:
        return logical in self.shards

    def run(self, logical: str, facts: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        """Assert ``facts`` into every shard of ``logical``; return (rule name, fact) fired; retract."""
        fired: list[tuple[str, dict[str, Any]]] = []
        # A fact carries only the fields its ruleset reads: durable parses every byte we send.
        # Non-ASCII stays raw UTF-8: durable_rules compares the bytes and does not decode \u escapes.
        fields = self.fields[logical]
        slim = [{k: fact[k] for k in fields if k in fact} for fact in facts]
        for list_field in _FILTERED_LISTS:
            if list_field in fields:
                wanted = self.lists[list_field].get(logical, frozenset())
                for fact in slim:
                    # "-" keeps the list non-empty: durable's allItems is false on an empty list.
                    values = fact.get(list_field, ())
                    kept = list(values) if wanted is None else [value for value in values if value in wanted]
                    fact[list_field] = [*kept, "-"]
        payload = orjson.dumps(slim).decode()
        for shard in self.shards[logical]:
            handle = self.handles[shard]
            _, state = durable.assert_facts(handle, payload)
            try:
                started = durable.start_action_for_state(handle, state)
                message = started[1] if started else None
                while message:
                    for rule_name, frame in orjson.loads(message).items():
                        fired.append((rule_name, frame["m"]))
                    message = durable.complete_and_start_action(handle, state)
            finally:
                durable.retract_facts(handle, payload)
        return fired

    def evaluate(
        self, batches: dict[str, list[dict[str, Any]]]
    ) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, str]]]:
        """Run every ruleset a fact concerns; a ruleset that fails is reported, the others still run."""
        fired: list[tuple[str, dict[str, Any]]] = []
        failures: list[tuple[str, str]] = []
        for logical, batch in batches.items():
            if not self.has(logical):
                continue
            try:
                fired.extend(self.run(logical, batch))
            except Exception as error:
                logger.exception("durable_rules failed on ruleset %s", logical)
                failures.append((logical, f"{type(error).__name__}: {error}"))
        return fired, failures

    def close(self) -> None:
        with DURABLE_LOCK:
            for handle in self.handles.values():
                try:
                    durable.delete_ruleset(handle)
                except Exception:  # pragma: no cover - freeing is best effort
                    logger.exception("durable_rules could not delete a ruleset")
            self.handles.clear()
            self.closed = True
