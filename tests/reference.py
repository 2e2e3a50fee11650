"""A direct evaluation of the rule files, used only by the tests.

It reads the YAML with ``yaml.safe_load`` and applies each rule's meaning in plain Python, with
no compiler and no durable_rules, so that a test can check every finding the engine gives — and
every finding it does not give — against the rule data itself. Normalisation (units, frequency,
forms, routes, ICD codes) is shared with the engine: it has its own property tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rx_audit.contract import Prescription
from rx_audit.normalise import (
    TIMES_PER_DAY,
    dose_in_unit,
    normalise_form,
    normalise_frequency,
    normalise_icd,
    normalise_route,
    normalise_title,
    supply_days,
)
from rx_audit.rulebook import normalise_name
from rx_audit.rulebook.names import NON_DRUG_ALLERGENS, allergen_parts, resolve_name


@dataclass
class ReferenceRulebook:
    drugs: dict[str, dict[str, Any]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    allergy_classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    allergy_names: dict[str, set[str]] = field(default_factory=dict)
    interactions: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    custom: list[dict[str, Any]] = field(default_factory=list)
    class_rules: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


def load(root: Path) -> ReferenceRulebook:
    book = ReferenceRulebook()
    for path in sorted(root.rglob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if path.is_relative_to(root / "dictionary"):
            continue
        if "drug" in data:
            drug = data["drug"]
            book.drugs[drug["id"]] = data
            for alias in [drug["id"], drug["name"], *drug.get("names", []), *drug.get("atc", [])]:
                book.names[normalise_name(alias)] = drug["id"]
        if "allergy_classes" in data:
            book.allergy_classes.update(data["allergy_classes"])
        book.interactions.extend(data.get("interactions") or [])
        book.duplicates.extend(data.get("duplicates") or [])
        book.custom.extend(data.get("custom") or [])
        book.class_rules.extend(data.get("class_rules") or [])
        if "settings" in data:
            book.settings = data["settings"]
    _load_dictionary(root, book)
    for class_id, spec in book.allergy_classes.items():
        for alias in [class_id, spec["name"], *spec.get("names", [])]:
            book.allergy_names.setdefault(normalise_name(alias), set()).add(class_id)
    return book


def _load_dictionary(root: Path, book: ReferenceRulebook) -> None:
    """Dictionary entries: a drug without a monograph (class rules only); a monograph gains its ingredients."""
    owners: dict[str, set[str]] = {}
    for path in sorted((root / "dictionary").glob("*.yaml")):
        for entry in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("dictionary") or []:
            info = {"kind": entry.get("kind", "chemical"), "ingredients": entry.get("ingredients") or [entry["id"]],
                    "control": entry.get("control") or [], "tier": entry.get("antibacterial_tier"),
                    "dictionary_classes": entry.get("classes") or []}
            if entry["id"] in book.drugs:
                book.drugs[entry["id"]].update(info)
            else:
                book.drugs[entry["id"]] = {"drug": entry, "monograph": False, **info}
            for alias in [entry["id"], entry["name"], *([entry["inn"]] if entry.get("inn") else []),
                          *entry.get("salts", []), *entry.get("names", []), *entry.get("atc", [])]:
                owners.setdefault(normalise_name(alias), set()).add(entry["id"])
    for name, ids in owners.items():
        if len(ids) == 1:  # a monograph's names come first; a shared dictionary name means neither
            book.names.setdefault(name, next(iter(ids)))


@dataclass
class Patient:
    age: float | None
    sex: str | None
    weight: float | None
    egfr: float | None
    pregnant: bool | None
    lactating: bool | None
    hepatic: str | None
    dx: list[str]
    allergies: set[str]
    visit: str = "outpatient"


@dataclass
class Item:
    id: str
    drug: str
    form_group: str | None
    release: str | None
    route: str | None
    freq: str | None
    dose: float | None
    daily: float | None
    days: float | None
    systemic: bool = True


def _in(low: float | None, high: float | None, value: float | None) -> bool | None:
    """``None`` when the value is missing and a bound needs it."""
    if low is None and high is None:
        return True
    if value is None:
        return None
    return (low is None or value >= low) and (high is None or value < high)


def condition_holds(
    when: dict[str, Any], patient: Patient, item: Item, ignore: frozenset[str] = frozenset()
) -> bool | None:
    """True / False, or ``None`` when a value the condition needs is missing; ``ignore`` drops fields."""
    results: list[bool | None] = []
    for name, value in (("age", patient.age), ("egfr", patient.egfr), ("weight", patient.weight),
                        ("daily", item.daily), ("days", item.days)):
        if name not in ignore:
            results.append(_in(when.get(f"{name}_min"), when.get(f"{name}_max"), value))
    if "sex" in when:
        results.append(None if patient.sex is None else patient.sex == when["sex"])
    for flag in ("pregnant", "lactating"):
        if flag not in when or flag in ignore:
            if when.get(flag):
                results.append(None if patient.sex is None else patient.sex == "F")
            continue
        actual = getattr(patient, flag)
        if patient.sex == "M" and actual is None:
            actual = False
        if when[flag]:
            # Compiled as sex == F and flag == 1.
            sex_ok = None if patient.sex is None else patient.sex == "F"
            results.append(sex_ok if sex_ok is not True else actual)
        else:
            results.append(None if actual is None else not actual)
    if "hepatic" in when and "hepatic" not in ignore:
        results.append(None if patient.hepatic is None else patient.hepatic in when["hepatic"])
    if "diagnoses" in when:
        keys = [normalise_icd(code) for code in when["diagnoses"]]
        results.append(any(dx.startswith(key) for dx in patient.dx for key in keys))
    if "release" in when:
        results.append(None if item.release is None else item.release in when["release"])
    if "forms" in when:
        results.append(None if item.form_group is None else item.form_group in when["forms"])
    if "routes" in when:
        results.append(None if item.route is None else item.route in when["routes"])
    if "visits" in when:
        results.append(patient.visit in when["visits"])
    if "not_diagnoses" in when:
        keys = [normalise_icd(code) for code in when["not_diagnoses"]]
        results.append(not any(dx.startswith(key) for dx in patient.dx for key in keys))
    if any(result is False for result in results):
        return False
    if any(result is None for result in results):
        return None
    return True


PATIENT_OPTIONAL = ("egfr", "weight", "hepatic", "pregnant", "lactating")


def _patient_value(patient: Patient, name: str) -> Any:
    return getattr(patient, name)


def undecidable_patient_fields(when: dict[str, Any], patient: Patient, item: Item) -> set[str]:
    """Optional patient fields the condition reads, that are missing, while the rest of it holds."""
    found = set()
    for name in PATIENT_OPTIONAL:
        reads = name in when or f"{name}_min" in when or f"{name}_max" in when
        if not reads or _patient_value(patient, name) is not None:
            continue
        if name in ("pregnant", "lactating"):
            if patient.sex != "M" and not (patient.sex == "F" and patient.age is not None
                                           and 12 <= patient.age < 55):
                continue
            if patient.sex == "M":
                continue
        if condition_holds(when, patient, item, ignore=frozenset({name})) is True:
            found.add(name)
    return found


def undecidable_item_fields(when: dict[str, Any], patient: Patient, item: Item) -> set[str]:
    """The item's daily dose or days the condition reads, missing, while the rest of it holds."""
    return {
        name for name, value in (("daily", item.daily), ("days", item.days))
        if value is None and (f"{name}_min" in when or f"{name}_max" in when)
        and condition_holds(when, patient, item, ignore=frozenset({name})) is True
    }


def _drug_id(book: ReferenceRulebook, text: str) -> str | None:
    # Reading a written name is normalisation, shared with the engine (like units and ICD codes).
    return resolve_name(text, book.names, lambda found: len(book.drugs[found].get("ingredients") or []) > 1)


def _allergens(book: ReferenceRulebook, text: str) -> set[str] | None:
    found = set(book.allergy_names.get(normalise_name(text), set()))
    drug_id = _drug_id(book, text)
    if drug_id:
        # A member's name implies its class only where the class says so (propagate, default true).
        found |= {drug_id, *(name for name in book.drugs[drug_id]["drug"].get("allergy_classes", [])
                             if book.allergy_classes.get(name, {}).get("propagate", True))}
    return found if found or normalise_name(text) in NON_DRUG_ALLERGENS else None


def patient_of(prescription: Prescription, book: ReferenceRulebook) -> Patient:
    allergies: set[str] = set()
    for text in prescription.patient.allergies:
        whole = _allergens(book, text)
        for found in ([whole] if whole is not None else [_allergens(book, part) for part in allergen_parts(text)]):
            allergies |= found or set()
    p = prescription.patient
    return Patient(
        age=prescription.age_years_at_issue(), sex=p.sex if p.sex in ("M", "F") else None, weight=p.weight_kg,
        egfr=p.egfr, pregnant=p.pregnant, lactating=p.lactating, hepatic=p.hepatic_impairment,
        dx=[normalise_icd(d.code) for d in prescription.diagnoses if d.code and normalise_icd(d.code)],
        allergies=allergies, visit=prescription.visit_type,
    )


def item_of(raw: Any, book: ReferenceRulebook) -> Item | None:
    drug_id = _drug_id(book, raw.drug)
    if drug_id is None and raw.atc:
        drug_id = book.names.get(normalise_name(raw.atc))
    if drug_id is None:
        return None
    unit = book.drugs[drug_id]["drug"].get("unit", "mg")
    form = normalise_form(raw.form) if raw.form else None
    freq = normalise_frequency(raw.frequency) if raw.frequency else None
    dose = None
    if raw.dose is not None:
        strength = (raw.strength.value, raw.strength.unit) if raw.strength else None
        dose = dose_in_unit(raw.dose.value, raw.dose.unit, unit, strength)
    daily = dose * TIMES_PER_DAY[freq] if dose is not None and freq is not None else None
    route = normalise_route(raw.route) if raw.route else None
    # Local forms act where applied; with no known form the route decides; unknown is systemic.
    systemic = (form.group not in ("topical", "ophthalmic", "nasal", "inhalation") if form
                else route not in ("top", "oph", "nas", "inh", "vag"))
    return Item(
        id=raw.id, drug=drug_id, form_group=form.group if form else None, release=form.release if form else None,
        route=route, freq=freq, dose=dose, daily=daily, days=raw.days, systemic=systemic,
    )


@dataclass
class Expected:
    fired: set[tuple[str, str | None]] = field(default_factory=set)
    # (item, field) pairs where a rule's data is missing and its other conditions do not exclude it.
    undecidable: set[tuple[str, str]] = field(default_factory=set)


def _compare(value: float | None, limit: dict[str, Any], per: float | None = 1.0) -> tuple[bool, bool] | None:
    """(above max, below min), or None when value is missing."""
    if value is None or per is None:
        return None
    value = value / per
    return (
        limit.get("max") is not None and value > limit["max"],
        limit.get("min") is not None and value < limit["min"],
    )


_CUSTOM_TESTS = {
    "eq": lambda value, wanted: value == wanted,
    "ne": lambda value, wanted: value != wanted,
    "lt": lambda value, wanted: value < wanted,
    "le": lambda value, wanted: value <= wanted,
    "gt": lambda value, wanted: value > wanted,
    "ge": lambda value, wanted: value >= wanted,
    "in": lambda value, wanted: value in wanted,
    "not_in": lambda value, wanted: value not in wanted,
}


def custom_holds(rule: dict[str, Any], values: dict[str, Any]) -> bool:
    """Every condition holds; a condition on a field the prescription lacks does not."""
    for condition in rule["when"]:
        value = values.get(condition["field"])
        wanted = condition["value"]
        if isinstance(wanted, bool):
            wanted = int(wanted)
        if value is None or not _CUSTOM_TESTS[condition["op"]](value, wanted):
            return False
    return True


def _prescription_values(prescription: Prescription, patient: Patient) -> dict[str, Any]:
    flags = {}
    for name in ("pregnant", "lactating"):
        value = getattr(patient, name)
        flags[name] = int(value) if value is not None else (0 if patient.sex == "M" else None)
    return {
        "visit": prescription.visit_type, "age": patient.age, "sex": patient.sex, "weight": patient.weight,
        "egfr": patient.egfr, "hepatic": patient.hepatic, "facility": prescription.facility.id,
        "facility_level": prescription.facility.level, "department": prescription.department,
        "prescriber": prescription.prescriber.id, "item_count": len(prescription.items),
        "dx_count": len(patient.dx), **flags,
    }


def _duration(item: Item, spec: dict[str, Any], prescription: Prescription, book: ReferenceRulebook,
              expected: Expected) -> None:
    if spec.get("kind") == "supply":
        return
    drug = spec["drug"]
    limit = (book.settings.get("duration") or {}).get(prescription.visit_type)
    if limit and item.days is not None:
        chronic_max = limit.get("chronic_drug_max_days")
        if chronic_max and drug.get("chronic"):
            if item.days > chronic_max:
                expected.fired.add((f"duration.{prescription.visit_type}_chronic_drug", item.id))
        elif item.days > limit["max_days"]:
            expected.fired.add((f"duration.{prescription.visit_type}", item.id))


def _population_rules(item: Item, raw: Any, spec: dict[str, Any], patient: Patient, book: ReferenceRulebook,
                      expected: Expected) -> None:
    """`class_rules:`: a class (or control) of the drug, the population in `when`."""
    keys = {*spec["drug"].get("classes", []), *spec.get("dictionary_classes", []),
            *(f"control:{c}" for c in spec.get("control", []))}
    for rule in book.class_rules:
        wanted = {*rule.get("classes", []), *(f"control:{c}" for c in rule.get("control", []))}
        if not keys & wanted or keys & set(rule.get("except_classes", [])):
            continue
        if rule.get("applies_to", "no_monograph") == "no_monograph" and spec.get("monograph", True):
            continue
        if rule.get("systemic") and not item.systemic:
            continue
        when = rule.get("when", {})
        for missing in undecidable_patient_fields(when, patient, item) | undecidable_item_fields(when, patient, item):
            expected.undecidable.add((item.id, missing))
        if condition_holds(when, patient, item) is True:
            expected.fired.add((f"class.{rule['id']}", item.id))


_TIER = {"unrestricted": 1, "restricted": 2, "special": 3}
_GRANTED = {"antibacterial_restricted": 2, "antibacterial_special": 3}


def _legality(item: Item, spec: dict[str, Any], prescription: Prescription, book: ReferenceRulebook,
              expected: Expected) -> None:
    policy = book.settings.get("privileges")
    if not policy:
        return
    prescriber = prescription.prescriber
    title = normalise_title(prescriber.title) if prescriber.title else None
    ranks = [_GRANTED[p] for p in prescriber.privileges or [] if p in _GRANTED]
    if title in policy.get("antibacterial_tier_by_title", {}):
        ranks.append(_TIER[policy["antibacterial_tier_by_title"][title]])
    tier = spec.get("tier")
    if tier and ranks and _TIER[tier] > max(ranks):
        expected.fired.add(("legality.antibacterial_tier", item.id))
    if prescriber.privileges is not None:
        for control in ("narcotic", "psychotropic_1"):
            if control in spec.get("control", []) and control not in prescriber.privileges:
                expected.fired.add((f"legality.{control}", item.id))


def _quantity(item: Item, raw: Any, spec: dict[str, Any], prescription: Prescription, book: ReferenceRulebook,
              expected: Expected) -> None:
    policy = book.settings.get("quantity")
    if not policy or spec.get("kind") == "supply" or raw.quantity is None or raw.dose is None:
        return
    if raw.quantity.value <= 1:  # one pack is the least that can be dispensed
        return
    if item.freq is None or item.freq in ("prn", "st"):
        return
    strength = (raw.strength.value, raw.strength.unit) if raw.strength else None
    days = supply_days((raw.quantity.value, raw.quantity.unit), (raw.dose.value, raw.dose.unit), strength,
                       TIMES_PER_DAY[item.freq])
    if days is None or not math.isfinite(days) or days >= 1e15:
        return
    days = round(days, 2)
    if item.days is not None:
        tolerated = round(item.days * policy.get("tolerance_ratio", 1.25) + policy.get("tolerance_days", 3), 2)
        if days > tolerated:
            expected.fired.add(("duration.quantity_vs_days", item.id))
    limit = (book.settings.get("duration") or {}).get(prescription.visit_type)
    if limit:
        chronic_max = limit.get("chronic_drug_max_days")
        chronic = bool(spec["drug"].get("chronic"))
        maximum = chronic_max if chronic_max and chronic else limit["max_days"]
        if days > maximum and (item.days is None or item.days <= maximum):
            suffix = "_chronic_drug" if chronic_max and chronic else ""
            expected.fired.add((f"duration.quantity.{prescription.visit_type}{suffix}", item.id))


def _class_rules(item: Item, drug: dict[str, Any], patient: Patient, book: ReferenceRulebook,
                 expected: Expected) -> None:
    """A dictionary drug without a monograph: allergy to the drug, to its classes, cross-reactivity."""
    if item.drug in patient.allergies:
        expected.fired.add(("allergy.drug", item.id))
    for class_id in drug.get("allergy_classes", []):
        if class_id in patient.allergies:
            expected.fired.add((f"allergy.class.{class_id}", item.id))
        for other in (book.allergy_classes.get(class_id) or {}).get("cross_reactive", {}):
            if other in patient.allergies:
                expected.fired.add((f"allergy.cross.{class_id}.{other}", item.id))
    # The route within a form group the dictionary lists (an unlisted group is not judged).
    routes = set((drug.get("forms") or {}).get(item.form_group or "") or [])
    if routes & {"iv", "ivgtt"}:  # push and drip are one intravenous way for dictionary entries
        routes |= {"iv", "ivgtt"}
    if item.route and routes and item.route not in routes:
        expected.fired.add(("route.dictionary", item.id))


def evaluate(prescription: Prescription, book: ReferenceRulebook) -> Expected:
    expected = Expected()
    patient = patient_of(prescription, book)
    shared = _prescription_values(prescription, patient)
    for rule in book.custom:
        if rule.get("scope", "item") == "prescription" and custom_holds(rule, shared):
            expected.fired.add((f"custom.{rule['id']}", None))
    def keys(drug_id: str) -> set[str]:
        return {drug_id, *(f"class:{c}" for c in book.drugs[drug_id]["drug"].get("classes", []))}

    def selector_key(selector: dict[str, Any]) -> str:
        return selector["drug"] if "drug" in selector else f"class:{selector['class']}"

    known_items = [i for raw in prescription.items if (i := item_of(raw, book)) is not None]
    items: list[Item] = []
    for raw in prescription.items:
        item = item_of(raw, book)
        form = normalise_form(raw.form) if raw.form else None
        frequency = normalise_frequency(raw.frequency) if raw.frequency else None
        values = {
            **shared, "drug": item.drug if item else "", "known": int(item is not None),
            "route": normalise_route(raw.route) if raw.route else None,
            "form_group": form.group if form else None, "release": form.release if form else None,
            "freq": frequency, "times_per_day": TIMES_PER_DAY[frequency] if frequency else None,
            "dose": item.dose if item else None, "daily": item.daily if item else None, "days": raw.days,
        }
        for rule in book.custom:
            if rule.get("scope", "item") == "item" and custom_holds(rule, values):
                expected.fired.add((f"custom.{rule['id']}", raw.id))
        if item is None:
            expected.fired.add(("completeness.unknown_drug", raw.id))
            continue
        items.append(item)
        spec = book.drugs[item.drug]
        drug = spec["drug"]
        prefix = item.drug
        _population_rules(item, raw, spec, patient, book, expected)
        _legality(item, spec, prescription, book, expected)
        _quantity(item, raw, spec, prescription, book, expected)
        if not spec.get("monograph", True):
            _class_rules(item, drug, patient, book, expected)
            _duration(item, spec, prescription, book, expected)
            continue

        indication = spec.get("indication")
        if indication and patient.dx:
            include = [normalise_icd(code) for code in indication["codes"]]
            exclude = [normalise_icd(code) for code in indication.get("exclude", [])]
            indicated = any(
                any(dx.startswith(key) for key in include) and not any(dx.startswith(key) for key in exclude)
                for dx in patient.dx
            )
            also = {selector_key(s) for s in indication.get("also_by", [])}
            co_prescribed = any(keys(other.drug) & also for other in known_items if other.id != item.id)
            if not indicated and not co_prescribed:
                expected.fired.add((f"{prefix}.indication", item.id))

        for regimen in spec.get("dose", []):
            applies = condition_holds(regimen.get("when", {}), patient, item)
            for missing in (undecidable_patient_fields(regimen.get("when", {}), patient, item)
                            | undecidable_item_fields(regimen.get("when", {}), patient, item)):
                expected.undecidable.add((item.id, missing))
            if applies is False:
                continue
            rid = f"{prefix}.dose.{regimen['id']}"
            for key, value, per, needs in (
                ("per_dose", item.dose, 1.0, "dose"),
                ("per_day", item.daily, 1.0, "daily"),
                ("per_dose_per_kg", item.dose, patient.weight, "dose"),
                ("per_day_per_kg", item.daily, patient.weight, "daily"),
            ):
                if key not in regimen:
                    continue
                if applies is None:
                    continue
                outcome = _compare(value, regimen[key], per)
                if outcome is None:
                    if per is None:
                        expected.undecidable.add((item.id, "weight"))
                    # A missing daily total is reported as such only when the dose itself is known.
                    if value is None and not (needs == "daily" and item.dose is None):
                        expected.undecidable.add((item.id, needs))
                    continue
                above, below = outcome
                if above:
                    expected.fired.add((f"{rid}.{key}", item.id))
                if below:
                    expected.fired.add((f"{rid}.{key}.below_min", item.id))
            if regimen.get("frequencies") and applies:
                if item.freq is None:
                    expected.undecidable.add((item.id, "freq"))
                elif item.freq not in regimen["frequencies"]:
                    expected.fired.add((f"{rid}.frequency", item.id))

        forms = drug["forms"]
        if item.form_group is None:
            expected.undecidable.add((item.id, "form_group"))
        elif item.form_group not in forms:
            expected.fired.add((f"{prefix}.route.form", item.id))
        elif item.route is None:
            expected.undecidable.add((item.id, "route"))
        elif item.route not in forms[item.form_group]:
            expected.fired.add((f"{prefix}.route.{item.form_group}", item.id))

        for contra in spec.get("contraindications", []):
            holds = condition_holds(contra["when"], patient, item)
            for missing in (undecidable_patient_fields(contra["when"], patient, item)
                            | undecidable_item_fields(contra["when"], patient, item)):
                expected.undecidable.add((item.id, missing))
            if holds:
                expected.fired.add((f"{prefix}.contra.{contra['id']}", item.id))

        own = {item.drug, *drug.get("allergy_classes", [])}
        if patient.allergies & own:
            expected.fired.add((f"{prefix}.allergy", item.id))
        for allergy_class in drug.get("allergy_classes", []):
            for other in (book.allergy_classes.get(allergy_class) or {}).get("cross_reactive", {}):
                if other in patient.allergies and other not in drug.get("allergy_classes", []):
                    expected.fired.add((f"{prefix}.allergy.cross.{other}", item.id))

        if spec.get("max_days") is not None and item.days is not None and item.days > spec["max_days"]:
            expected.fired.add((f"{prefix}.duration", item.id))

        _duration(item, spec, prescription, book, expected)

    def selected(selector: dict[str, Any], item: Item) -> bool:
        """The item meets the selector's own conditions; an unknown daily dose counts as reaching it."""
        if selector.get("systemic") and not item.systemic:
            return False
        return not (selector.get("daily_min") is not None and item.daily is not None
                    and item.daily < selector["daily_min"])

    def ingredients(drug_id: str) -> list[str]:
        return book.drugs[drug_id].get("ingredients") or [drug_id]

    def not_duplicated() -> set[str]:
        """Infusion vehicles (settings.vehicles) and supplies: written twice, not a duplicate."""
        vehicles = (book.settings.get("vehicles") or {}).get("drugs", [])
        return {*vehicles, *(drug_id for drug_id, drug in book.drugs.items() if drug.get("kind") == "supply")}

    def atc_groups(drug_id: str) -> set[str]:
        policy = book.settings.get("atc_duplicates")
        if not policy:
            return set()
        groups = set()
        for code in book.drugs[drug_id]["drug"].get("atc") or []:
            code = code.strip().upper()
            exempt = [prefix.upper() for prefix in policy.get("except_groups", [])]
            if len(code) >= 5 and not (policy.get("except_other", True) and code[4] == "X") and not any(
                    code.startswith(prefix) for prefix in exempt):
                groups.add(code[:5])
        return groups

    def place(item: Item) -> str:
        return "systemic" if item.systemic else (item.form_group or "")

    for index, first in enumerate(items):
        for second in items[index + 1 :]:
            a, b = keys(first.drug), keys(second.drug)
            if first.drug == second.drug:
                # The same drug written twice: a duplicate, not an interaction with itself — unless
                # one is a once-only dose or they act in different places (tablets and eye drops).
                same_place = (first.systemic and second.systemic) or (
                    not first.systemic and not second.systemic and first.form_group == second.form_group)
                if same_place and "st" not in (first.freq, second.freq) and first.drug not in not_duplicated():
                    expected.fired.add(("duplicate.same_ingredient", second.id))
                continue
            else:
                class_duplicate = False
                for duplicate in book.duplicates:
                    key = f"class:{duplicate['class']}"
                    local = duplicate.get("systemic") and not (first.systemic and second.systemic)
                    if key in a and key in b and not local:
                        expected.fired.add((f"duplicate.{duplicate['id']}", second.id))
                        class_duplicate = True
                # Two products with an ingredient in common, acting in the same place; a class rule
                # about the same two items says it better.
                ingredient_duplicate = not class_duplicate and place(first) == place(second) and bool(
                    (set(ingredients(first.drug)) & set(ingredients(second.drug))) - not_duplicated())
                if ingredient_duplicate:
                    expected.fired.add(("duplicate.ingredient", second.id))
            interacting = False
            for interaction in book.interactions:
                sx, sy = interaction["between"]
                x, y = selector_key(sx), selector_key(sy)
                if (x in a and y in b and selected(sx, first) and selected(sy, second)) or (
                    y in a and x in b and selected(sy, first) and selected(sx, second)
                ):
                    expected.fired.add((f"interaction.{interaction['id']}", second.id))
                    interacting = True
            # Two products of one ATC level-4 group, when no other rule spoke of the two items.
            skip = (book.settings.get("atc_duplicates") or {}).get("skip_frequencies", ["st", "prn"])
            if (first.drug != second.drug and not class_duplicate and not ingredient_duplicate and not interacting
                    and place(first) == place(second) and first.freq not in skip and second.freq not in skip
                    and atc_groups(first.drug) & atc_groups(second.drug)):
                expected.fired.add(("duplicate.atc", second.id))
    return expected
