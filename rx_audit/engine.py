"""The audit: a prescription's facts asserted into durable_rules, every fired rule explained.

How durable_rules 2.0.28 is driven, and why (each point measured on this project's machine):

* Facts, not events: ``assert`` fires *every* matching rule, where ``post`` consumes an event
  after the first. Each audit asserts its facts and retracts the same JSON in ``finally``, in one
  session per ruleset, so nothing of one prescription is left for the next and memory stays flat.
* Small rulesets, dispatched: a ruleset scans its rules one by one (≈53 ns per rule per fact)
  and breaks at 512 rules, so the compiler writes one ruleset per drug, one per drug or class for
  pairs of items, and two global ones; a fact only visits the rulesets that concern it.
* The engine's C API directly (``durable_rules_engine``), not ``durable.engine.Host``: a Host
  starts two timer threads that poll every ruleset and may run our actions on their own thread
  (observed: ``post`` returning before its action ran), and ``Host.assert_facts`` raises
  ``MessageNotHandled`` when the *last* fact matched nothing — dropping the actions of the facts
  before it. Here the fired rules of a batch are drained with ``start_action_for_state`` /
  ``complete_and_start_action`` on the caller's thread, under one lock per process (the C code
  never releases the GIL, so the lock costs no parallelism).
* A missing field never matches in durable_rules, so nothing is left to chance: values are
  normalised and type-checked first (pydantic, finite numbers), absent values are *omitted* from
  the fact, and each rule's missing-data twin fires instead of the rule staying silent.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import durable_rules_engine as durable
import orjson

from rx_audit.errors import EngineError, PrescriptionError, RxAuditError
from rx_audit.models import (
    AuditResult,
    Category,
    Finding,
    Prescription,
    RecordError,
    Severity,
    parse_prescription,
)
from rx_audit.rulebook import SEVERITY_RANK, CompiledRule, Drug, Rulebook, load_rulebook, normalise_name
from rx_audit.units import (
    TIMES_PER_DAY,
    dose_in_unit,
    icd_prefixes,
    normalise_form,
    normalise_frequency,
    normalise_icd,
    normalise_route,
)

logger = logging.getLogger("rx_audit")

_GENERATIONS = itertools.count(1)
_FACT_NUMBERS = itertools.count(1)
# One lock for every durable_rules call in the process: the engine is a process-wide C library.
_DURABLE_LOCK = threading.RLock()


# List fields whose values a fact carries only where some rule of the ruleset looks for them.
_FILTERED_LISTS = ("dx", "allergies")


class _Registered:
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
        with _DURABLE_LOCK:
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
                    fact[list_field] = [*(value for value in fact.get(list_field, ()) if value in wanted), "-"]
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

    def close(self) -> None:
        with _DURABLE_LOCK:
            for handle in self.handles.values():
                try:
                    durable.delete_ruleset(handle)
                except Exception:  # pragma: no cover - freeing is best effort
                    logger.exception("durable_rules could not delete a ruleset")
            self.handles.clear()
            self.closed = True


@dataclass
class _Facts:
    """What one prescription asserts: facts per ruleset, plus what findings show but rules never read."""

    batches: dict[str, list[dict[str, Any]]]
    dx_codes: list[str]
    allergy_text: dict[str, str]


class Auditor:
    """Loads a rulebook once and audits prescriptions; thread-safe; hot-reloadable.

    >>> auditor = Auditor.from_path("rules")
    >>> result = auditor.audit({"id": "RX1", "patient": {...}, "items": [...]})
    >>> result.flagged, [f.rule for f in result.findings]
    """

    def __init__(self, rulebook: Rulebook):
        self._current = _Registered(rulebook)
        self._reload_lock = threading.Lock()

    @classmethod
    def from_path(cls, path: str | Path = "rules") -> Auditor:
        return cls(load_rulebook(path))

    @property
    def rulebook(self) -> Rulebook:
        return self._current.rulebook

    @property
    def rulebook_hash(self) -> str:
        return self._current.rulebook.hash

    def reload(self, path: str | Path | None = None) -> str:
        """Load a new rulebook version and swap it in; audits in flight finish on the old one.

        The new rules are compiled and registered before the swap, so a rulebook with errors
        raises :class:`~rx_audit.errors.RulebookError` and the live version stays.
        """
        with self._reload_lock:
            rulebook = load_rulebook(path if path is not None else self._current.rulebook.root)
            fresh = _Registered(rulebook)
            with _DURABLE_LOCK:
                old, self._current = self._current, fresh
                old.close()
            return rulebook.hash

    def close(self) -> None:
        self._current.close()

    # --- auditing ------------------------------------------------------------------------------

    def audit(self, record: Any) -> AuditResult:
        """Audit one prescription (dict, JSON text or :class:`Prescription`).

        Raises :class:`~rx_audit.errors.PrescriptionError` for input that cannot be read; never
        for a problem of the rules: those become ``completeness`` findings.
        """
        prescription = parse_prescription(record)
        while True:
            registered = self._current
            try:
                facts = _facts_for(prescription, registered.rulebook)
                with _DURABLE_LOCK:
                    if registered.closed:
                        continue  # swapped by a reload between normalising and evaluating
                    fired, failures = _evaluate(registered, facts)
                return _result(prescription, registered.rulebook, facts, fired, failures)
            except Exception as error:
                # A defect of ours must not release a prescription nobody audited, nor block
                # prescribing: the prescription is held with the error, for a pharmacist.
                logger.exception("audit of %s failed", prescription.id)
                return _unaudited(prescription, registered.rulebook, f"{type(error).__name__}: {error}")

    def audit_batch(self, records: Iterable[Any]) -> list[AuditResult | RecordError]:
        """Audit each record; a record that cannot be read gets a :class:`RecordError`, the rest go on."""
        return list(self.audit_stream(enumerate(records, start=1)))

    def audit_stream(self, numbered: Iterable[tuple[int, Any]]) -> Iterator[AuditResult | RecordError]:
        """Like :meth:`audit_batch`, lazily, for ``(line, record)`` pairs from :func:`rx_audit.io.iter_records`."""
        for line, record in numbered:
            if isinstance(record, RecordError):
                yield record
                continue
            try:
                yield self.audit(record)
            except PrescriptionError as error:
                yield RecordError(id=error.prescription_id, line=line, field=error.field, error=error.message)
            except Exception as error:  # one record never stops a batch
                record_id = record.get("id") if isinstance(record, dict) else None
                message = str(error) if isinstance(error, RxAuditError) else f"{type(error).__name__}: {error}"
                yield RecordError(id=str(record_id)[:200] if record_id else None, line=line, error=message[:500])


# --- facts -------------------------------------------------------------------------------------


def _put(fact: dict[str, Any], key: str, value: Any) -> None:
    """Absent values are omitted, never ``None``: durable's ``$nex`` then fires the twin."""
    if value is not None:
        fact[key] = value


_LARGEST = 1e15


def _number(value: float) -> float | int | None:
    """A number durable_rules reads correctly, or ``None`` (treated as missing) when there is none.

    durable_rules 2.0.28 misreads exponent notation and can crash on it, and orjson writes floats
    below 1e-5 that way (``1e-6``): fractions are rounded to 5 decimals. Integers stay integers
    (evidence reads 500, not 500.0); a value beyond 1e15 would overflow the engine's integers.
    """
    if not math.isfinite(value) or abs(value) >= _LARGEST:
        return None
    if isinstance(value, int):
        return value
    return int(value) if value.is_integer() else round(value, 5)


@lru_cache(maxsize=4096)
def _form(text: str) -> tuple[str, str] | None:
    form = normalise_form(text)
    return (form.group, form.release) if form else None


_route = lru_cache(maxsize=1024)(normalise_route)
_frequency = lru_cache(maxsize=1024)(normalise_frequency)


# Forms and routes that act where they are applied. Inhalers count as local here: a rule about an
# inhaled drug's systemic effect simply does not ask for `systemic`.
_LOCAL_FORMS = frozenset({"topical", "ophthalmic", "nasal", "inhalation"})
_LOCAL_ROUTES = frozenset({"top", "oph", "nas", "inh", "vag"})


def _systemic(form_group: str | None, route: str | None) -> int:
    """1 unless the form (or, without a known form, the route) is local; unknown counts as systemic."""
    if form_group is not None:
        return int(form_group not in _LOCAL_FORMS)
    return int(route not in _LOCAL_ROUTES)


def _may_pair(rulebook: Rulebook, first: Drug, second: Drug) -> bool:
    """Whether any pair rule could match these two drugs, in either order."""
    first_keys, second_keys = rulebook.pair_keys[first.id], rulebook.pair_keys[second.id]
    partners = rulebook.pair_partners
    return any(not partners.get(key, frozenset()).isdisjoint(second_keys) for key in first_keys) or any(
        not partners.get(key, frozenset()).isdisjoint(first_keys) for key in second_keys
    )


def _facts_for(prescription: Prescription, rulebook: Rulebook) -> _Facts:
    """Normalise a prescription into durable facts; every value a rule compares is checked here."""
    patient = prescription.patient
    number = next(_FACT_NUMBERS)
    # Scalars every scope may read (custom rules included).
    common: dict[str, Any] = {"n": number, "visit": prescription.visit_type}
    age = prescription.age_years_at_issue()
    if age is not None:
        _put(common, "age", _number(age))
    if patient.sex in ("M", "F"):
        common["sex"] = patient.sex
    if patient.weight_kg is not None:
        _put(common, "weight", _number(patient.weight_kg))
    if patient.egfr is not None:
        _put(common, "egfr", _number(patient.egfr))
    for flag in ("pregnant", "lactating"):
        value = getattr(patient, flag)
        if value is not None:
            common[flag] = int(value)
        elif patient.sex == "M":
            common[flag] = 0
    _put(common, "hepatic", patient.hepatic_impairment)
    _put(common, "facility", prescription.facility.id)
    _put(common, "facility_level", prescription.facility.level)
    _put(common, "department", prescription.department)
    _put(common, "prescriber", prescription.prescriber.id)

    dx_codes = [d.code for d in prescription.diagnoses if d.code and normalise_icd(d.code)]
    dx_tokens: list[str] = []
    for code in dx_codes:
        dx_tokens.extend(icd_prefixes(code))
        dx_tokens.append("=" + normalise_icd(code))
    common["dx_count"] = len(dx_codes)

    allergy_ids: set[str] = set()
    allergy_text: dict[str, str] = {}
    for text in patient.allergies:
        found = list(rulebook.allergy_names.get(normalise_name(text), []))
        drug = rulebook.drug_for(text)
        if drug is not None:
            found.extend(drug.allergy_implied)
        for allergy_id in found:
            allergy_ids.add(allergy_id)
            allergy_text.setdefault(allergy_id, text)

    # Mixed-script text, by item position ("items[2].drug") or for the prescription as a whole.
    mixed: dict[int | None, list[str]] = defaultdict(list)
    for note in prescription.text_notes:
        head, _, _ = note.path.partition(".")
        position = int(head[6:-1]) if head.startswith("items[") and head.endswith("]") else None
        mixed[position].append(note.path)

    batches: dict[str, list[dict[str, Any]]] = defaultdict(list)
    global_batch = batches["global"]
    rx_fact = {
        "t": "rx", **common, "item_count": len(prescription.items),
        "allergies_recorded": int("allergies" in patient.model_fields_set),
    }
    if mixed.get(None):
        rx_fact["text_mixed"] = 1
        rx_fact["text_fields"] = "、".join(mixed[None])
    global_batch.append(rx_fact)
    # Drug rulesets also read diagnoses and allergies; the global ruleset never does.
    clinical = {**common, "dx": list(dict.fromkeys(dx_tokens)), "allergies": sorted(allergy_ids)}
    known: list[tuple[dict[str, Any], Drug]] = []
    for position, item in enumerate(prescription.items):
        drug = rulebook.drug_for(item.drug, item.atc)
        fact: dict[str, Any] = {
            "t": "item", "item": item.id, "drug_text": item.drug, "known": int(drug is not None),
            "has_dose": int(item.dose is not None), "has_freq": int(bool(item.frequency)),
            "has_route": int(bool(item.route)), "has_days": int(item.days is not None),
            "has_form": int(bool(item.form)),
        }
        if position in mixed:
            fact["text_mixed"] = 1
            fact["text_fields"] = "、".join(mixed[position])
        if item.form:
            form = _form(item.form)
            if form is not None:
                fact["form_group"], fact["release"] = form
            else:
                fact["raw_form"] = item.form
            fact["form"] = item.form
        if item.route:
            route = _route(item.route)
            if route is not None:
                fact["route"] = route
            else:
                fact["raw_route"] = item.route
        fact["sys"] = _systemic(fact.get("form_group"), fact.get("route"))
        times = None
        if item.frequency:
            frequency = _frequency(item.frequency)
            if frequency is not None:
                fact["freq"] = frequency
                times = TIMES_PER_DAY[frequency]
                fact["times_per_day"] = times
            else:
                fact["raw_freq"] = item.frequency
        if item.days is not None:
            _put(fact, "days", _number(item.days))
        if drug is not None:
            fact["drug"] = drug.id
            fact["chronic"] = int(drug.chronic)
            if item.dose is not None:
                strength = (item.strength.value, item.strength.unit) if item.strength else None
                converted = dose_in_unit(item.dose.value, item.dose.unit, drug.unit, strength)
                dose = _number(converted) if converted is not None else None
                if dose is None:
                    written = f"{_number(item.dose.value)}{item.dose.unit}"
                    if item.strength:
                        written += f"（规格 {_number(item.strength.value)}{item.strength.unit}）"
                    fact["raw_dose"] = written if item.strength else written + "（无规格）"
                else:
                    fact["dose"] = dose
                    if times is not None:
                        _put(fact, "daily", _number(dose * times))
                    if "weight" in common:
                        _put(fact, "dose_per_kg", _number(dose / common["weight"]))
                        if "daily" in fact:
                            _put(fact, "daily_per_kg", _number(fact["daily"] / common["weight"]))
            known.append((fact, drug))
            batches[f"drug:{drug.id}"].append({**clinical, **fact})
        else:
            fact["drug"] = ""
        global_batch.append({**common, **fact})

    # The same drug written again: one fact per repeat, against its previous occurrence (linear).
    last_of: dict[str, dict[str, Any]] = {}
    for fact, drug in known:
        previous = last_of.get(drug.id)
        if previous is not None:
            global_batch.append({"t": "pair", "n": number, "key": "", "a_item": previous["item"],
                                 "b_item": fact["item"], "a_drug": drug.id, "b_drug": drug.id, "same": 1})
        last_of[drug.id] = fact
    for index, (first, first_drug) in enumerate(known):
        for second, second_drug in known[index + 1 :]:
            # The same drug twice is the same-ingredient duplicate above; it does not interact with itself.
            if first_drug.id == second_drug.id or not _may_pair(rulebook, first_drug, second_drug):
                continue
            # One fact per orientation and per key of its first drug that some rule pairs with
            # a key of the second.
            for (a, a_drug), (b, b_drug) in (((first, first_drug), (second, second_drug)),
                                             ((second, second_drug), (first, first_drug))):
                other_keys = rulebook.pair_keys[b_drug.id]
                for key in rulebook.pair_keys[a_drug.id]:
                    partners = rulebook.pair_partners.get(key)
                    if not partners or partners.isdisjoint(other_keys):
                        continue
                    pair = {"t": "pair", "n": number, "key": key, "a_item": a["item"], "b_item": b["item"],
                            "a_drug": a_drug.id, "b_drug": b_drug.id, "other_keys": other_keys, "same": 0,
                            "a_sys": a["sys"], "b_sys": b["sys"]}
                    _put(pair, "a_daily", a.get("daily"))
                    _put(pair, "b_daily", b.get("daily"))
                    batches["global" if rulebook.pairs_in_global else f"pair:{key}"].append(pair)
    return _Facts(batches=batches, dx_codes=dx_codes, allergy_text=allergy_text)


# --- evaluation --------------------------------------------------------------------------------


def _evaluate(
    registered: _Registered, facts: _Facts
) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, str]]]:
    """Run every ruleset a fact concerns; a ruleset that fails is reported, the others still run."""
    fired: list[tuple[str, dict[str, Any]]] = []
    failures: list[tuple[str, str]] = []
    for logical, batch in facts.batches.items():
        if not registered.has(logical):
            continue
        try:
            fired.extend(registered.run(logical, batch))
        except Exception as error:
            logger.exception("durable_rules failed on ruleset %s", logical)
            failures.append((logical, f"{type(error).__name__}: {error}"))
    return fired, failures


class _Blank(dict[str, Any]):
    """Message formatting that leaves an unknown placeholder visible instead of raising."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _display(value: Any) -> Any:
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        return round(value, 2) if abs(value) >= 1 else round(value, 4)
    if isinstance(value, list):
        return [_display(entry) for entry in value]
    return value


# Twins standing for fields written (or not) on the prescription: when the structural finding
# already says the dose is missing, the rules' "cannot check, dose missing" notes add nothing.
_STRUCTURAL_COVERS = {
    "dose": ("dose", "daily", "dose_per_kg", "daily_per_kg"),
    "freq": ("freq", "daily"),
    "route": ("route",),
    "days": ("days",),
    "form": ("form_group",),
}


def _result(
    prescription: Prescription,
    rulebook: Rulebook,
    facts: _Facts,
    fired: list[tuple[str, dict[str, Any]]],
    failures: list[tuple[str, str]],
) -> AuditResult:
    findings: list[Finding] = []
    order = {item.id: position for position, item in enumerate(prescription.items)}
    seen: set[tuple[str, Any]] = set()
    twins: dict[tuple[str | None, str], tuple[CompiledRule, set[str], dict[str, Any]]] = {}
    structural: dict[str | None, set[str]] = defaultdict(set)

    # A symmetric pair rule fires in both orientations: keep the one in prescription order.
    fired = sorted(fired, key=lambda entry: order.get(entry[1].get("a_item"), 0))
    for rule_name, fact in fired:
        rule = rulebook.rules[rule_name]
        if rule.scope == "pair":
            # Both orientations of a pair may fire a rule: report it once, on the later item. The
            # fact keeps the orientation it fired in: {a} is the drug of the rule's first selector,
            # as its message is written, whatever the order on the prescription.
            item = max(fact["a_item"], fact["b_item"], key=lambda i: order.get(i, 0))
        else:
            item = fact.get("item") if rule.scope == "item" else None
        if rule.missing_field is not None:
            key = (item, rule.missing_field)
            entry = twins.setdefault(key, (rule, set(), fact))
            entry[1].update(rule.covers)
            continue
        if rule.id.startswith(("completeness.missing.", "completeness.unusable.")) and rule.scope == "item":
            structural[item].update(_STRUCTURAL_COVERS.get(rule.id.rsplit(".", 1)[1], ()))
        identity = (rule.id, item if rule.scope != "pair" else frozenset((fact["a_item"], fact["b_item"])))
        if identity in seen:
            continue
        seen.add(identity)
        findings.append(_finding(rule, fact, item, rulebook, facts))

    for (item, missing), (rule, covered, fact) in twins.items():
        if missing in structural.get(item, set()):
            continue
        finding = _finding(rule, fact, item, rulebook, facts, covers=sorted(covered))
        findings.append(finding)

    findings.extend(_engine_error(rulebook, logical, error) for logical, error in failures)
    return _verdict(prescription, rulebook, findings, unaudited=bool(failures))


def _engine_error(rulebook: Rulebook, where: str, error: str) -> Finding:
    return Finding(
        rule="completeness.engine_error", category=Category.completeness, severity=Severity.warning,
        message=f"规则执行出错（{where}），该部分未完成审核，请药师人工审核：{error}"[:1000],
        source=f"{rulebook.root}", evidence={"ruleset": where, "error": error[:500]},
        reference="rx_audit: 未能完整审核的处方一律拦截，由药师人工审核",
    )


def _unaudited(prescription: Prescription, rulebook: Rulebook, error: str) -> AuditResult:
    return _verdict(prescription, rulebook, [_engine_error(rulebook, "audit", error)], unaudited=True)


def _verdict(prescription: Prescription, rulebook: Rulebook, findings: list[Finding], *, unaudited: bool) -> AuditResult:
    order = {item.id: position for position, item in enumerate(prescription.items)}
    findings.sort(key=lambda f: (-SEVERITY_RANK[str(f.severity)], order.get(f.item, -1), f.rule))
    top = max((SEVERITY_RANK[str(f.severity)] for f in findings), default=0)
    severity = next((Severity(name) for name, rank in SEVERITY_RANK.items() if rank == top), None)
    # A prescription the engine could not fully audit is held whatever the threshold
    # (`flag_threshold: critical` once let durable's error 303 release one as not flagged).
    flagged = unaudited or top >= SEVERITY_RANK[rulebook.settings.flag_threshold]
    return AuditResult(id=prescription.id, flagged=flagged, severity=severity, rulebook=rulebook.hash,
                       findings=findings)


def _finding(
    rule: CompiledRule,
    fact: dict[str, Any],
    item: str | None,
    rulebook: Rulebook,
    facts: _Facts,
    covers: list[str] | None = None,
) -> Finding:
    evidence: dict[str, Any] = {}
    for name in rule.evidence_fields:
        if name == "dx":
            evidence["diagnoses"] = facts.dx_codes
        elif name in fact:
            evidence[name] = _display(fact[name])
    limits = {k: _display(v) for k, v in rule.limits.items() if k not in ("value_field", "allergy_keys")}
    evidence.update(limits)
    if rule.missing_field is not None:
        evidence["missing"] = rule.missing_field
        evidence["rules"] = covers or list(rule.covers)
    wanted = rule.placeholders
    values: dict[str, Any] = {name: fact[name] for name in wanted if name in fact}
    values.update((name, value) for name, value in evidence.items() if name in wanted)
    if "drug" in wanted:
        drug = rulebook.drugs.get(fact.get("drug", "")) if fact.get("drug") else None
        values["drug"] = drug.name if drug else fact.get("drug_text", "")
    if "dx" in wanted:
        values["dx"] = "、".join(facts.dx_codes) or "无"
    value_field = rule.limits.get("value_field")
    if value_field and value_field in fact:
        values["value"] = _display(fact[value_field])
        evidence["value"] = _display(fact[value_field])
    if "allergy_keys" in rule.limits:
        matched = [facts.allergy_text.get(key, key) for key in rule.limits["allergy_keys"]
                   if key in fact.get("allergies", [])]
        values["allergy"] = "、".join(dict.fromkeys(matched)) or "该药"
        evidence["allergies"] = list(dict.fromkeys(matched))
    if rule.scope == "pair":
        values["a"] = rulebook.drugs[fact["a_drug"]].name
        values["b"] = rulebook.drugs[fact["b_drug"]].name
        evidence["items"] = [fact["a_item"], fact["b_item"]]
        evidence["drugs"] = [fact["a_drug"], fact["b_drug"]]
        evidence.pop("a_drug", None)
        evidence.pop("b_drug", None)
    if covers is not None or rule.missing_field is not None:
        values["rules"] = "、".join(covers or rule.covers)
    try:
        message = rule.message.format_map(_Blank({k: _display(v) for k, v in values.items()}))
    except (ValueError, IndexError, AttributeError) as error:
        message = f"{rule.message}（消息模板错误：{error}）"
    return Finding(
        rule=rule.id, category=Category(rule.category), severity=Severity(rule.severity), item=item, message=message,
        source=rule.source, evidence=evidence, reference=rule.reference or None,
    )
