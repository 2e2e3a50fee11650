"""The durable_rules adapter: the only module that imports durable_rules.

How durable_rules 2.0.28 is driven, and why (each point measured on this project's machine):

* Facts, not events: ``assert`` fires *every* matching rule, where ``post`` consumes an event
  after the first. Each audit asserts its facts and retracts the same JSON in ``finally``, in one
  session per ruleset, so nothing of one prescription is left for the next and memory stays flat.
* Rulesets packed, facts batched: a call costs about as much for one fact as for dozens, so the
  facts of a batch's prescriptions go in together (one call per ruleset for 16 prescriptions,
  :meth:`Registered.evaluate_many`), and the per-drug and per-key rulesets are packed into shared
  ones below the ~512-path limit (every rule of them starts with an equality on ``drug`` or
  ``key``). The 2,000-drug generated rulebook: 2,400 rulesets registered in 8.5 s, packed 230 in
  4.6 s, at the same audit speed.
* Memory is per rule, not per ruleset: ≈7–14 KB a rule (10,000 trivial rules: 70 MB; the alpha
  nodes' 512-slot hash tables are the bulk — a build with smaller frame indexes changed nothing)
  and ≈4.7 KB per value of a list test. A rulebook's resident size follows its rule count — the
  generated 2,000-drug rulebook's 74,416 rules ≈ 1.1 GB in durable.
* Time is per fact and per field: ≈2.5 µs a fact plus ≈0.18 µs a field (asserted and retracted;
  facts of 9 to 69 fields), whatever the ruleset's size once its rules begin with an equality.
  This is why a drug's limits stay in its own rules, constants inside them, and the item's one
  fact carries only the patient's values: limits as data (one small fact per check, compared by
  generic rules) cut durable's memory to a tenth but sent ~13 facts per prescription where one
  did — 0.31× the audit speed normalising every gate, 0.60× with generic rules per gate shape and
  a drug's checks of one shape in one fact (branches ``checks-as-data``,
  ``checks-as-data-shapes``; benchmarks/README.md). The replay and HTTP throughput targets
  decided it.
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
import logging
import threading
from collections import defaultdict
from typing import Any

import durable_rules_engine as durable
import orjson

from rx_audit.errors import EngineError
from rx_audit.rulebook import Rulebook
from rx_audit.rulebook.gc_pause import paused_gc

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
        with paused_gc():
            self.fields = {name: tuple(sorted(fields)) for name, fields in rulebook.fields_read().items()}
            self.lists = {name: rulebook.list_vocabulary(name) for name in _FILTERED_LISTS}
            definitions = rulebook.ruleset_definitions()
            with DURABLE_LOCK:
                for name, definition in definitions.items():
                    self.handles[name] = self._create(name, orjson.dumps(definition).decode())
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
        return self.evaluate_many([batches])[0]

    def evaluate_many(
        self, prescriptions: list[dict[str, list[dict[str, Any]]]]
    ) -> list[tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, str]]]]:
        """Several prescriptions' facts in one call per ruleset; (fired, failures) for each, in order.

        A call into durable_rules costs about as much for one fact as for dozens (measured: 8,781
        calls for 2,000 prescriptions were a fifth of the audit), so a batch asserts the facts of
        all its prescriptions together. No rule joins two facts (every rule is ``{"all": [{"m":
        …}]}``), so one prescription's facts cannot match another's; each fired fact is returned to
        the prescription whose number ``n`` it carries. A ruleset that fails on the merged facts is
        run again for each prescription alone, so a poisoned record spoils only its own audit.
        """
        results: list[tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, str]]]] = [
            ([], []) for _ in prescriptions
        ]
        owner: dict[int, int] = {}
        merged: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for index, batches in enumerate(prescriptions):
            for logical, facts in batches.items():
                merged[logical].extend(facts)
                for fact in facts:
                    owner[fact["n"]] = index
        for logical, facts in merged.items():
            if not self.has(logical):
                continue
            try:
                fired = self.run(logical, facts)
            except Exception:
                for index, batches in enumerate(prescriptions):
                    if logical in batches:
                        self._run_alone(logical, batches[logical], results[index])
                continue
            for rule_name, fact in fired:
                results[owner[fact["n"]]][0].append((rule_name, fact))
        return results

    def _run_alone(self, logical: str, facts: list[dict[str, Any]],
                   result: tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, str]]]) -> None:
        try:
            result[0].extend(self.run(logical, facts))
        except Exception as error:
            logger.exception("durable_rules failed on ruleset %s", logical)
            result[1].append((logical, f"{type(error).__name__}: {error}"))

    def close(self) -> None:
        with DURABLE_LOCK:
            for handle in self.handles.values():
                try:
                    durable.delete_ruleset(handle)
                except Exception:  # pragma: no cover - freeing is best effort
                    logger.exception("durable_rules could not delete a ruleset")
            self.handles.clear()
            self.closed = True
