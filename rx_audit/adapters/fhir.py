"""HL7 FHIR R4 in and out: a ``Bundle`` of MedicationRequests → a CONTRACT §1 prescription, and an
audit result (§2) → FHIR ``DetectedIssue`` resources.

Pure functions, no server. The bundle is validated with ``fhir.resources`` (its ``R4B`` module,
which reads R4; the package's default module is R5 and rejects R4 resources) before anything is
read; a bundle that is not valid FHIR raises :class:`rx_audit.PrescriptionError` naming the path.

What the contract needs and FHIR does not carry is left out, never invented: the audit then says
it is missing. A dose without a unit (Synthea), a route the contract has no word for (ophthalmic,
vaginal), a schedule with no Chinese code (every 3 weeks), an eGFR in mL/min without the
1.73 m² normalisation, a partial birth date: each is left out and named in the record's extra
field ``fhir_lost`` (the audit ignores unknown fields), so a caller can count what a feed loses.
``fhir.resources`` is imported lazily: ``import rx_audit`` stays light.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rx_audit.contract import CATEGORY_LABELS_ZH, AuditResult, Finding
from rx_audit.errors import PrescriptionError

CATEGORY_SYSTEM = "https://rx-audit.org/fhir/CodeSystem/finding-category"
RULE_SYSTEM = "https://rx-audit.org/fhir/CodeSystem/rule"
EXTENSION_BASE = "https://rx-audit.org/fhir/StructureDefinition/"
SEVERITY_TO_FHIR = {"critical": "high", "warning": "moderate", "info": "low"}

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
EGFR_LOINC = frozenset({"33914-3", "48642-3", "48643-3", "62238-1", "98979-8"})
WEIGHT_LOINC = "29463-7"
PREGNANCY_LOINC = frozenset({"82810-3", "11449-6"})
PREGNANT_SNOMED = "77386006"
NOT_PREGNANT_SNOMED = "60001007"
NO_KNOWN_ALLERGY_SNOMED = frozenset({"716186003", "409137002", "428607008", "429625007"})

# SNOMED CT route codes (route concepts and the older qualifier values the R4 examples use).
ROUTES_SNOMED = {
    "26643006": "po",  # oral route
    "47625008": "iv",  # intravenous route
    "255560000": "iv",  # intravenous (qualifier)
    "78421000": "im",  # intramuscular route
    "255559005": "im",  # intramuscular (qualifier)
    "34206005": "sc",  # subcutaneous route
    "263887005": "sc",  # subcutaneous (qualifier)
    "6064005": "top",  # topical route
    "359540000": "top",  # topical (qualifier)
    "18679011000001101": "inh",  # inhalation
    "447694001": "inh",  # respiratory tract route
    "37161004": "pr",  # rectal route
    "37839007": "sl",  # sublingual route
}
ROUTES_TEXT = {
    "oral": "po", "po": "po", "by mouth": "po", "口服": "po",
    "intravenous": "iv", "iv": "iv", "静推": "iv", "静注": "iv",
    "intravenous infusion": "ivgtt", "ivgtt": "ivgtt", "静滴": "ivgtt",
    "intramuscular": "im", "im": "im", "肌注": "im",
    "subcutaneous": "sc", "sc": "sc", "皮下": "sc",
    "topical": "top", "外用": "top", "inhalation": "inh", "inhaled": "inh", "吸入": "inh",
    "rectal": "pr", "sublingual": "sl",
}  # fmt: skip
# UCUM and HL7 v3 orderable-drug-form units → the contract's units.
UNITS = {
    "mg": "mg", "g": "g", "ug": "ug", "mcg": "ug", "μg": "ug", "ml": "mL", "l": "L",
    "[iu]": "IU", "iu": "IU", "u": "U", "[u]": "U", "unit": "U", "units": "U",
    "tab": "tablet", "tablet": "tablet", "{tbl}": "tablet", "cap": "capsule", "capsule": "capsule",
    "ea": "each", "patch": "patch", "drop": "drop",
}  # fmt: skip
FORMS = {  # HL7 v3 orderable drug form and SNOMED dose forms → the contract's forms
    "TAB": "tablet", "CAP": "capsule", "ORTAB": "tablet", "ENTCTAB": "enteric-coated tablet",
    "ERTAB": "sustained-release tablet", "CHEWTAB": "chewable tablet", "SUSP": "suspension", "SYRUP": "syrup",
    "INJ": "injection", "IVSOLN": "injection", "INHL": "inhaler", "CRM": "cream", "GRAN": "granule",
    "385055001": "tablet", "385049006": "capsule", "421026006": "tablet", "385219001": "injection",
}  # fmt: skip
TIMING_CODES = {
    "QD": "qd", "BID": "bid", "TID": "tid", "QID": "qid", "QOD": "qod", "Q4H": "q4h", "Q6H": "q6h",
    "Q8H": "q8h", "Q12H": "q12h", "QW": "qw", "HS": "qn", "AM": "qd", "PM": "qd", "BED": "qn",
}  # fmt: skip
_PERIOD_HOURS = {"s": 1 / 3600, "min": 1 / 60, "h": 1.0, "d": 24.0, "wk": 168.0}


def _r4b(name: str) -> Any:
    """A class of ``fhir.resources.R4B`` (imported here only, on first use)."""
    from importlib import import_module

    try:
        module = import_module(f"fhir.resources.R4B.{name.lower()}")
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError("FHIR support needs the 'fhir' extra: pip install 'rx-audit[fhir]'") from error
    return getattr(module, name)


# --------------------------------------------------------------------------- validation


def _entry_label(bundle: Mapping[str, Any], loc: Sequence[Any]) -> str:
    path = "Bundle"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    if len(loc) >= 2 and loc[0] == "entry" and isinstance(loc[1], int):
        entries = bundle.get("entry") or []
        if loc[1] < len(entries) and isinstance(entries[loc[1]], dict):
            resource = entries[loc[1]].get("resource") or {}
            if isinstance(resource, dict) and resource.get("resourceType"):
                path += f" ({resource['resourceType']}/{resource.get('id', '?')})"
    return path


def validate_bundle(bundle: Any) -> None:
    """Raise :class:`PrescriptionError` naming the path if ``bundle`` is not a valid FHIR R4 Bundle."""
    from pydantic import ValidationError

    bundle_id = bundle.get("id") if isinstance(bundle, dict) else None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise PrescriptionError(bundle_id, "resourceType", "不是FHIR Bundle (not a FHIR Bundle)")
    try:
        _r4b("Bundle").model_validate(bundle)
    except ValidationError as error:
        first = error.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        raise PrescriptionError(bundle_id, _entry_label(bundle, first["loc"]), f"FHIR R4: {message}") from error
    except (ValueError, TypeError) as error:  # fhir.resources raises plain errors for a few shapes
        raise PrescriptionError(bundle_id, "Bundle", f"FHIR R4: {str(error)[:300]}") from error


# --------------------------------------------------------------------------- small readers


def _codings(concept: Any) -> list[dict[str, Any]]:
    if not isinstance(concept, dict):
        return []
    return [c for c in concept.get("coding") or [] if isinstance(c, dict)]


def _text(concept: Any) -> str | None:
    """A CodeableConcept's text, else its first coding's display."""
    if not isinstance(concept, dict):
        return None
    if concept.get("text"):
        return str(concept["text"]).strip() or None
    for coding in _codings(concept):
        if coding.get("display"):
            return str(coding["display"]).strip()
    return None


def _has_code(concept: Any, system: str, codes: Iterable[str]) -> bool:
    wanted = set(codes)
    return any(c.get("system") == system and c.get("code") in wanted for c in _codings(concept))


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if float(value).is_integer() else float(value)


def _unit(quantity: Mapping[str, Any]) -> str | None:
    for key in ("code", "unit"):
        raw = quantity.get(key)
        if isinstance(raw, str) and raw.strip():
            unit = UNITS.get(raw.strip().lower())
            if unit:
                return unit
    raw = quantity.get("unit") or quantity.get("code")
    return raw.strip() if isinstance(raw, str) and raw.strip() else None


def _quantity(quantity: Any) -> dict[str, Any] | None:
    if not isinstance(quantity, dict):
        return None
    value, unit = _number(quantity.get("value")), _unit(quantity)
    if value is None or unit is None:
        return None
    return {"value": value, "unit": unit}


def _ref_id(reference: Any) -> str | None:
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return None
    return reference["reference"].rstrip("/").split("/")[-1].removeprefix("urn:uuid:") or None


def _active(resource: Mapping[str, Any]) -> bool:
    """Not refuted, entered in error, inactive or resolved."""
    verification = {c.get("code") for c in _codings(resource.get("verificationStatus"))}
    clinical = {c.get("code") for c in _codings(resource.get("clinicalStatus"))}
    return not (verification & {"refuted", "entered-in-error"} or clinical & {"inactive", "resolved", "remission"})


def _when(resource: Mapping[str, Any]) -> str:
    for key in ("effectiveDateTime", "effectiveInstant", "issued"):
        if isinstance(resource.get(key), str):
            return str(resource[key])
    period = resource.get("effectivePeriod")
    return str(period.get("end") or period.get("start") or "") if isinstance(period, dict) else ""


# --------------------------------------------------------------------------- the bundle's resources


class _Resources:
    """The bundle's resources by type, and references resolved through fullUrl or Type/id."""

    def __init__(self, bundle: Mapping[str, Any]) -> None:
        self.by_type: dict[str, list[dict[str, Any]]] = {}
        self.by_ref: dict[str, dict[str, Any]] = {}
        for entry in bundle.get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                continue
            kind = str(resource.get("resourceType"))
            self.by_type.setdefault(kind, []).append(resource)
            if entry.get("fullUrl"):
                self.by_ref[str(entry["fullUrl"])] = resource
            if resource.get("id"):
                self.by_ref[f"{kind}/{resource['id']}"] = resource

    def of(self, kind: str) -> list[dict[str, Any]]:
        return self.by_type.get(kind, [])

    def resolve(self, reference: Any, container: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
            return None
        ref = reference["reference"]
        if ref.startswith("#") and container is not None:
            for contained in container.get("contained") or []:
                if isinstance(contained, dict) and contained.get("id") == ref[1:]:
                    return contained
            return None
        if ref in self.by_ref:
            return self.by_ref[ref]
        tail = "/".join(ref.rstrip("/").split("/")[-2:])  # an absolute URL: its Type/id
        return self.by_ref.get(tail)


def _about(resource: Mapping[str, Any], patient_refs: set[str]) -> bool:
    """The resource is about the prescription's patient (or names no patient)."""
    reference = resource.get("subject") or resource.get("patient")
    if not patient_refs or not isinstance(reference, dict) or not reference.get("reference"):
        return True
    return reference["reference"] in patient_refs or _ref_id(reference) in {r.split("/")[-1] for r in patient_refs}


# --------------------------------------------------------------------------- patient


def _sex(patient: Mapping[str, Any]) -> str | None:
    return {"male": "M", "female": "F", "other": "U", "unknown": "U"}.get(str(patient.get("gender")))


def _observation_value(resources: list[dict[str, Any]], codes: Iterable[str]) -> dict[str, Any] | None:
    """The latest valid Observation with one of these LOINC codes."""
    wanted = set(codes)
    found = [
        o for o in resources
        if _has_code(o.get("code"), LOINC, wanted) and o.get("status") not in ("entered-in-error", "cancelled")
    ]  # fmt: skip
    return max(found, key=_when) if found else None


def _egfr(observation: Mapping[str, Any], lost: list[str]) -> float | int | None:
    quantity = observation.get("valueQuantity") or {}
    value = _number(quantity.get("value"))
    unit = f"{quantity.get('code') or ''} {quantity.get('unit') or ''}".lower().replace(" ", "")
    if value is None:
        lost.append("patient.egfr: Observation without a numeric valueQuantity")
        return None
    if "ml/min" not in unit or "1.73" not in unit:
        lost.append(f"patient.egfr: unit {quantity.get('unit') or quantity.get('code')!r} is not mL/min/1.73m2")
        return None
    if quantity.get("comparator") in ("<", "<="):
        # "<15" has no value to compare with a rule's threshold; ">90" is read as 90, a lower bound.
        lost.append(f"patient.egfr: {quantity['comparator']}{value} is not a value")
        return None
    return value


def _weight(observation: Mapping[str, Any], lost: list[str]) -> float | int | None:
    quantity = observation.get("valueQuantity") or {}
    value = _number(quantity.get("value"))
    unit = str(quantity.get("code") or quantity.get("unit") or "").strip()
    factor = {"kg": 1.0, "g": 0.001, "[lb_av]": 0.45359237, "lb": 0.45359237, "lbs": 0.45359237}.get(unit.lower())
    if value is None or factor is None:
        lost.append(f"patient.weight_kg: body weight {value!r} {unit!r} not readable")
        return None
    return _number(round(value * factor, 2))


def _pregnancy(observations: list[dict[str, Any]], conditions: list[dict[str, Any]]) -> bool | None:
    observation = _observation_value(observations, PREGNANCY_LOINC)
    if observation is not None:
        value = observation.get("valueCodeableConcept")
        if _has_code(value, SNOMED, {PREGNANT_SNOMED}):
            return True
        if _has_code(value, SNOMED, {NOT_PREGNANT_SNOMED}):
            return False
    for condition in conditions:
        if _has_code(condition.get("code"), SNOMED, {PREGNANT_SNOMED}):
            return True
        for coding in _codings(condition.get("code")):
            code = str(coding.get("code") or "").upper()
            if _is_icd10(coding) and (code.startswith("Z33") or code.startswith("O")):
                return True
    return None


def _allergies(allergies: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for allergy in allergies:
        code = allergy.get("code")
        if _has_code(code, SNOMED, NO_KNOWN_ALLERGY_SNOMED):
            continue
        text = _text(code)
        if text and text not in out:
            out.append(text)
    return out


def _birth(patient: Mapping[str, Any], out: dict[str, Any], lost: list[str]) -> None:
    born = patient.get("birthDate")
    if isinstance(born, str) and len(born) == 10:
        out["birth_date"] = born
    elif born:
        lost.append(f"patient.birth_date: partial birthDate {born!r}")


def _patient(resources: _Resources, subject: Any, lost: list[str]) -> tuple[dict[str, Any], set[str]]:
    out: dict[str, Any] = {}
    refs: set[str] = set()
    patient = resources.resolve(subject) if subject else None
    if patient is None and len(resources.of("Patient")) == 1 and not subject:
        patient = resources.of("Patient")[0]
    if isinstance(subject, dict) and subject.get("reference"):
        refs.add(str(subject["reference"]))
    if patient is not None:
        if patient.get("id"):
            out["id"] = str(patient["id"])
            refs.add(f"Patient/{patient['id']}")
        if _sex(patient):
            out["sex"] = _sex(patient)
        _birth(patient, out, lost)
    elif _ref_id(subject):
        out["id"] = _ref_id(subject)
    return out, refs


def _clinical(resources: _Resources, patient: dict[str, Any], refs: set[str], lost: list[str]) -> list[dict[str, Any]]:
    """Fill the patient's weight, eGFR, pregnancy and allergies; return the diagnoses."""
    observations = [o for o in resources.of("Observation") if _about(o, refs)]
    conditions = [c for c in resources.of("Condition") if _about(c, refs) and _active(c)]
    allergies = [a for a in resources.of("AllergyIntolerance") if _about(a, refs) and _active(a)]
    weight = _observation_value(observations, {WEIGHT_LOINC})
    if weight is not None and (kg := _weight(weight, lost)) is not None:
        patient["weight_kg"] = kg
    egfr = _observation_value(observations, EGFR_LOINC)
    if egfr is not None and (value := _egfr(egfr, lost)) is not None:
        patient["egfr"] = value
    pregnant = _pregnancy(observations, conditions)
    if pregnant is not None:
        patient["pregnant"] = pregnant
    if allergies:
        patient["allergies"] = _allergies(allergies)
    return [d for c in conditions if (d := _diagnosis(c, lost)) is not None]


def _is_icd10(coding: Mapping[str, Any]) -> bool:
    system = str(coding.get("system") or "").lower().replace("-", "")
    return "icd10" in system or system.endswith("2.16.840.1.113883.6.3")


def _diagnosis(condition: Mapping[str, Any], lost: list[str]) -> dict[str, Any] | None:
    concept = condition.get("code")
    for coding in _codings(concept):
        if _is_icd10(coding) and coding.get("code"):
            entry = {"code": str(coding["code"])}
            name = coding.get("display") or (concept or {}).get("text")
            if name:
                entry["name"] = str(name)
            return entry
    name = _text(concept)
    if name is None:
        return None
    if _codings(concept):
        lost.append(f"diagnoses: {name!r} has no ICD-10 code (kept as text)")
    return {"name": name}


# --------------------------------------------------------------------------- items


def _frequency_from_repeat(repeat: Mapping[str, Any]) -> str | None:
    period, unit = _number(repeat.get("period")), repeat.get("periodUnit")
    if period is None or unit not in _PERIOD_HOURS:
        return None
    times = _number(repeat.get("frequency")) or 1
    hours = period * _PERIOD_HOURS[str(unit)] / times  # hours between doses
    when = set(repeat.get("when") or [])
    if hours == 24 and when & {"HS", "NIGHT"}:
        return "qn"
    by_hours = {4: "q4h", 6: "q6h", 8: "tid", 12: "bid", 24: "qd", 48: "qod", 168: "qw", 84: "biw", 56: "tiw"}
    if unit == "h" and hours in (4, 6, 8, 12):
        return f"q{int(hours)}h"  # "every 8 hours" is written q8h, "3 times a day" tid
    if unit == "d" and hours == 6:
        return "qid"
    return by_hours.get(int(hours)) if float(hours).is_integer() else None


def _frequency(dosage: Mapping[str, Any]) -> str | None:
    if dosage.get("asNeededBoolean") is True or dosage.get("asNeededCodeableConcept"):
        return "prn"
    timing = dosage.get("timing") or {}
    repeat = timing.get("repeat")
    if isinstance(repeat, dict):
        frequency = _frequency_from_repeat(repeat)
        if frequency:
            return frequency
    for coding in _codings(timing.get("code")):
        if str(coding.get("code") or "").upper() in TIMING_CODES:
            return TIMING_CODES[str(coding["code"]).upper()]
    text = _text(timing.get("code"))
    return text.lower() if text and text.upper() in TIMING_CODES else None


def _route(dosage: Mapping[str, Any]) -> str | None:
    concept = dosage.get("route")
    for coding in _codings(concept):
        if coding.get("system") == SNOMED and str(coding.get("code")) in ROUTES_SNOMED:
            return ROUTES_SNOMED[str(coding["code"])]
    text = (_text(concept) or "").lower().removesuffix(" route").removesuffix(" (qualifier value)")
    return ROUTES_TEXT.get(text.strip())


def _dose(dosage: Mapping[str, Any], item: dict[str, Any], lost: list[str], where: str) -> None:
    for dose_rate in dosage.get("doseAndRate") or []:
        quantity = dose_rate.get("doseQuantity")
        if quantity is None and isinstance(dose_rate.get("doseRange"), dict):
            quantity = dose_rate["doseRange"].get("high")  # a range "1-2 tablets": its upper end
            item["fhir_dose_range"] = True
        if quantity is None:
            if any(key.startswith("rate") for key in dose_rate):
                lost.append(f"{where}.dose: an infusion rate only ({', '.join(k for k in dose_rate if k != 'type')})")
            continue
        dose = _quantity(quantity)
        if dose is None:
            lost.append(f"{where}.dose: {quantity.get('value')!r} without a unit")
        else:
            item["dose"] = dose
        return


def _medication(request: Mapping[str, Any], resources: _Resources, item: dict[str, Any]) -> None:
    medication = resources.resolve(request.get("medicationReference"), request)
    concept = request.get("medicationCodeableConcept") or (medication or {}).get("code")
    name = _text(concept) or (request.get("medicationReference") or {}).get("display")
    if not name and medication is not None:
        name = _ingredient_names(medication)
    if name:
        item["drug"] = name
    for coding in _codings(concept):
        if "whocc" in str(coding.get("system")) and coding.get("code"):
            item["atc"] = str(coding["code"])
    if medication is None:
        return
    for coding in _codings(medication.get("form")):
        if str(coding.get("code")) in FORMS:
            item["form"] = FORMS[str(coding["code"])]
    ingredients = [i for i in medication.get("ingredient") or [] if isinstance(i, dict)]
    if len(ingredients) == 1 and isinstance(ingredients[0].get("strength"), dict):
        numerator = _quantity(ingredients[0]["strength"].get("numerator"))
        denominator = ingredients[0]["strength"].get("denominator") or {}
        if numerator and denominator.get("value") == 1:
            item["strength"] = numerator


def _ingredient_names(medication: Mapping[str, Any]) -> str | None:
    """A Medication with no code (a compounded product, TPN): its ingredients' names, joined."""
    names = []
    for ingredient in medication.get("ingredient") or []:
        if isinstance(ingredient, dict):
            reference = ingredient.get("itemReference") or {}
            name = _text(ingredient.get("itemCodeableConcept")) or reference.get("display")
            if name:
                names.append(str(name))
    return " + ".join(names) or None


def _days(request: Mapping[str, Any]) -> float | int | None:
    duration = (request.get("dispenseRequest") or {}).get("expectedSupplyDuration") or {}
    value = _number(duration.get("value"))
    factor = {"d": 1, "day": 1, "days": 1, "wk": 7, "week": 7, "weeks": 7}.get(
        str(duration.get("code") or duration.get("unit") or "").lower()
    )
    return _number(value * factor) if value is not None and factor else None


def _item(request: dict[str, Any], position: int, resources: _Resources, lost: list[str]) -> dict[str, Any]:
    item: dict[str, Any] = {"id": str(request.get("id") or position)}
    where = f"items[{item['id']}]"
    _medication(request, resources, item)
    if "drug" not in item:
        lost.append(f"{where}.drug: no medication name")
    dosages = [d for d in request.get("dosageInstruction") or [] if isinstance(d, dict)]
    if len(dosages) > 1:
        lost.append(f"{where}: {len(dosages)} dosage instructions, only the first is audited")
    if dosages:
        _dose(dosages[0], item, lost, where)
        frequency, route = _frequency(dosages[0]), _route(dosages[0])
        if frequency:
            item["frequency"] = frequency
        elif dosages[0].get("timing"):
            lost.append(f"{where}.frequency: timing not expressible as a contract code")
        if route:
            item["route"] = route
        elif dosages[0].get("route"):
            lost.append(f"{where}.route: {_text(dosages[0]['route'])!r} has no contract code")
    days = _days(request)
    if days is not None:
        item["days"] = days
    quantity = _quantity((request.get("dispenseRequest") or {}).get("quantity"))
    if quantity is not None:
        item["quantity"] = quantity
    return item


# --------------------------------------------------------------------------- the prescription


def _prescriber(requests: list[dict[str, Any]], resources: _Resources) -> dict[str, Any]:
    requester = next((r["requester"] for r in requests if isinstance(r.get("requester"), dict)), None)
    if requester is None:
        return {}
    out: dict[str, Any] = {}
    practitioner = resources.resolve(requester)
    identifier = requester.get("identifier") or {}
    if identifier.get("value"):
        out["id"] = str(identifier["value"])
    elif practitioner and practitioner.get("id"):
        out["id"] = str(practitioner["id"])
    elif _ref_id(requester):
        out["id"] = _ref_id(requester)
    name = requester.get("display")
    if not name and practitioner:
        names = practitioner.get("name") or []
        first = names[0] if names and isinstance(names[0], dict) else {}
        name = first.get("text") or " ".join([*(first.get("given") or []), first.get("family") or ""]).strip()
    if name:
        out["name"] = str(name)
    return out


def _prescription_id(bundle: Mapping[str, Any], requests: list[dict[str, Any]]) -> str | None:
    groups = {(r.get("groupIdentifier") or {}).get("value") for r in requests}
    if len(groups) == 1 and None not in groups:
        return str(groups.pop())
    if (bundle.get("identifier") or {}).get("value"):
        return str(bundle["identifier"]["value"])
    if bundle.get("id"):
        return str(bundle["id"])
    if len(requests) == 1:
        return str(requests[0].get("id") or "") or None
    return None


def _facility(resources: _Resources, facility: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if facility is not None:
        return dict(facility)
    organizations = resources.of("Organization")
    if len(organizations) != 1:
        return None
    out = {k: str(organizations[0][k]) for k in ("id", "name") if organizations[0].get(k)}
    return out or None


def _visit_type(requests: list[dict[str, Any]]) -> str | None:
    codes = {c.get("code") for r in requests for concept in r.get("category") or [] for c in _codings(concept)}
    if "inpatient" in codes:
        return "inpatient"
    return "outpatient" if codes & {"outpatient", "community", "discharge"} else None


def prescription_from_bundle(
    bundle: dict[str, Any],
    *,
    facility: Mapping[str, Any] | None = None,
    prescription_id: str | None = None,
    validate: bool = True,
) -> dict[str, Any]:
    """A FHIR R4 Bundle → a CONTRACT §1 prescription dict (pass it to ``Auditor.audit``).

    One prescription per bundle: every MedicationRequest (except ``entered-in-error``) becomes an
    item whose ``id`` is the MedicationRequest's id (its position if it has none); they must name
    one patient. ``facility`` (``{"id", "name", "level"}``) wins over an Organization in the bundle.
    What could not be mapped is listed in the extra field ``fhir_lost``.
    """
    if validate:
        validate_bundle(bundle)
    resources = _Resources(bundle)
    requests = [r for r in resources.of("MedicationRequest") if r.get("status") != "entered-in-error"]
    record_id = prescription_id or _prescription_id(bundle, requests)
    if not requests:
        raise PrescriptionError(record_id, "Bundle.entry", "Bundle中没有MedicationRequest (no MedicationRequest)")
    if record_id is None:
        raise PrescriptionError(None, "Bundle.id", "无法确定处方id (no Bundle.id, identifier or groupIdentifier)")
    subjects = {str((r.get("subject") or {}).get("reference")) for r in requests}
    if len(subjects) > 1:
        message = f"多个患者 (several patients: {sorted(subjects)})"
        raise PrescriptionError(record_id, "MedicationRequest.subject", message)
    lost: list[str] = []
    patient, refs = _patient(resources, requests[0].get("subject"), lost)
    diagnoses = _clinical(resources, patient, refs, lost)
    authored = sorted(str(r["authoredOn"]) for r in requests if r.get("authoredOn"))
    record: dict[str, Any] = {"id": record_id}
    if authored:
        record["issued_at"] = authored[0]
    if visit := _visit_type(requests):
        record["visit_type"] = visit
    if place := _facility(resources, facility):
        record["facility"] = place
    if prescriber := _prescriber(requests, resources):
        record["prescriber"] = prescriber
    record["patient"] = patient
    record["diagnoses"] = diagnoses
    record["items"] = [_item(r, n, resources, lost) for n, r in enumerate(requests, start=1)]
    references = _request_references(bundle)
    for item in record["items"]:
        item.setdefault("drug", "")  # the contract rejects it, naming the item: nothing is invented
        if item["id"] in references:
            item["fhir_reference"] = references[item["id"]]
    record["fhir_lost"] = lost
    return record


# --------------------------------------------------------------------------- DetectedIssue out


def _request_references(bundle: Mapping[str, Any]) -> dict[str, str]:
    """Item id → reference of its MedicationRequest: ``MedicationRequest/{id}``, else the entry's fullUrl."""
    out: dict[str, str] = {}
    position = 0
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "MedicationRequest":
            continue
        if resource.get("status") == "entered-in-error":
            continue
        position += 1
        if resource.get("id"):
            out[str(resource["id"])] = f"MedicationRequest/{resource['id']}"
        elif entry.get("fullUrl"):
            out[str(position)] = str(entry["fullUrl"])
    return out


def _item_references(bundle_or_request_ids: Any) -> dict[str, str]:
    """Item id → MedicationRequest reference from a bundle, a mapping, or references in item order."""
    if isinstance(bundle_or_request_ids, Mapping) and bundle_or_request_ids.get("resourceType") == "Bundle":
        return _request_references(bundle_or_request_ids)
    if isinstance(bundle_or_request_ids, Mapping):
        return {str(k): _as_reference(v) for k, v in bundle_or_request_ids.items()}
    return {str(n): _as_reference(v) for n, v in enumerate(bundle_or_request_ids or [], start=1)}


def _as_reference(value: Any) -> str:
    text = str(value)
    return text if "/" in text or text.startswith("urn:") else f"MedicationRequest/{text}"


def _extension(name: str, value: str) -> dict[str, Any]:
    return {"url": EXTENSION_BASE + name, "valueString": value}


def _evidence_text(finding: Finding) -> str:
    text = f"{finding.rule} ({finding.source})"
    if finding.evidence:
        text += " " + json.dumps(finding.evidence, ensure_ascii=False, default=str)[:1000]
    return text


def _issue(result: AuditResult, finding: Finding, index: int, references: dict[str, str],
           patient: str | None) -> dict[str, Any]:
    category = str(finding.category)
    seed = f"{result.id}|{result.rulebook}|{index}|{finding.rule}|{finding.item}"
    issue: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, seed)),
        "extension": [_extension("rx-audit-rule", finding.rule), _extension("rx-audit-source", finding.source),
                      _extension("rx-audit-rulebook", result.rulebook)],
        "identifier": [{"system": RULE_SYSTEM, "value": finding.rule}],
        "status": "final",
        "code": {"coding": [{"system": CATEGORY_SYSTEM, "code": category,
                             "display": CATEGORY_LABELS_ZH.get(category, category)}]},
        "severity": SEVERITY_TO_FHIR[str(finding.severity)],
        "detail": finding.message,
        "evidence": [{"code": [{"coding": [{"system": RULE_SYSTEM, "code": finding.rule}],
                                "text": _evidence_text(finding)}]}],
    }  # fmt: skip
    if finding.reference:
        issue["extension"].append(_extension("rx-audit-clinical-reference", finding.reference))
        if re.match(r"^https?://\S+$", finding.reference):
            issue["reference"] = finding.reference
    if finding.item is not None and finding.item in references:
        issue["implicated"] = [{"reference": references[finding.item]}]
    if patient:
        issue["patient"] = {"reference": patient}
    return issue


def detected_issues(
    result: AuditResult | Mapping[str, Any],
    bundle_or_request_ids: Any,
    *,
    patient: str | None = None,
    validate: bool = True,
) -> list[dict[str, Any]]:
    """An audit result → one FHIR R4 ``DetectedIssue`` per finding (validated with fhir.resources).

    ``bundle_or_request_ids``: the Bundle that was audited, or a mapping item id → MedicationRequest
    reference, or the MedicationRequest ids/references in item order. ``patient`` (e.g.
    ``"Patient/pat1"``) fills ``DetectedIssue.patient``.
    """
    audit = result if isinstance(result, AuditResult) else AuditResult.model_validate(result)
    references = _item_references(bundle_or_request_ids)
    issues = [_issue(audit, f, n, references, patient) for n, f in enumerate(audit.findings)]
    if validate:
        model = _r4b("DetectedIssue")
        for issue in issues:
            model.model_validate(issue)
    return issues

