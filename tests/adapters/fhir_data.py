"""FHIR test data: the published R4 examples and Synthea resources (../shared/data), and one
hand-built bundle of a Chinese county-hospital outpatient prescription with every field mapped."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
EXAMPLES = SHARED / "fhir-r4-examples"
SYNTHEA = SHARED / "synthea-r4" / "raw_medicationrequests_r4_first50bundles.ndjson"
SNOMED, LOINC, UCUM = "http://snomed.info/sct", "http://loinc.org", "http://unitsofmeasure.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path


def example_requests() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(need(EXAMPLES).glob("medicationrequest*.json"))]


def example_patient() -> dict[str, Any]:
    return json.loads((need(EXAMPLES) / "patient-example-a_pat1.json").read_text())


def example_bundle(request: dict[str, Any]) -> dict[str, Any]:
    """One published MedicationRequest and its Patient (pat1) as a collection Bundle."""
    return {
        "resourceType": "Bundle",
        "id": f"bundle-{request['id']}",
        "type": "collection",
        "entry": [
            {"fullUrl": "http://example.org/fhir/Patient/pat1", "resource": example_patient()},
            {"fullUrl": f"http://example.org/fhir/MedicationRequest/{request['id']}", "resource": request},
        ],
    }


def synthea_bundles() -> list[dict[str, Any]]:
    """Synthea's MedicationRequests grouped by patient and encounter: one Bundle a prescription."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    with need(SYNTHEA).open(encoding="utf-8") as stream:
        for line in stream:
            request = json.loads(line)
            key = (request["subject"]["reference"], (request.get("encounter") or {}).get("reference", "none"))
            groups[key].append(request)
    return [
        {
            "resourceType": "Bundle",
            "id": encounter.removeprefix("urn:uuid:"),
            "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in requests],
        }
        for (_, encounter), requests in groups.items()
    ]


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, **({"display": display} if display else {})}]}


def observation(oid: str, loinc: str, value: float, unit: str, code: str, when: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": oid, "status": "final", "code": coding(LOINC, loinc),
        "subject": {"reference": "Patient/p1"}, "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": code},
    }  # fmt: skip


def metformin_request(rid: str = "mr1", dose: float = 1500, **extra: Any) -> dict[str, Any]:
    request = {
        "resourceType": "MedicationRequest", "id": rid, "status": "active", "intent": "order",
        "groupIdentifier": {"system": "urn:oid:1.2.156.1", "value": "MNS-20250326-000123"},
        "category": [coding("http://terminology.hl7.org/CodeSystem/medicationrequest-category", "outpatient")],
        "medicationCodeableConcept": {"text": "盐酸二甲双胍片", **coding("http://www.whocc.no/atc", "A10BA02")},
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2025-03-26T10:15:00+08:00",
        "requester": {"reference": "Practitioner/D007"},
        "dosageInstruction": [{
            "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}},
            "route": coding(SNOMED, "26643006", "Oral route"),
            "doseAndRate": [{"doseQuantity": {"value": dose, "unit": "mg", "system": UCUM, "code": "mg"}}],
        }],
        "dispenseRequest": {
            "quantity": {"value": 90, "unit": "片"},
            "expectedSupplyDuration": {"value": 30, "unit": "days", "system": UCUM, "code": "d"},
        },
    }  # fmt: skip
    request.update(extra)
    return request


def county_resources(egfr: float = 24) -> list[dict[str, Any]]:
    """Patient, conditions, allergies and observations of one outpatient (subject Patient/p1)."""
    return [
        {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1972-05-02"},
        {"resourceType": "Practitioner", "id": "D007", "name": [{"text": "赵明红"}],
         "identifier": [{"system": "urn:his:staff", "value": "D007"}]},
        {"resourceType": "Organization", "id": "LZH", "name": "凉州户镇分院"},
        {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
         "code": {"coding": [{"system": ICD10, "code": "E11.900", "display": "2型糖尿病"},
                             {"system": SNOMED, "code": "44054006", "display": "Diabetes mellitus type 2"}]}},
        {"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/p1"},
         "code": {"text": "Essential hypertension", **coding(SNOMED, "59621000")}},
        {"resourceType": "Condition", "id": "c3", "subject": {"reference": "Patient/p1"},
         "verificationStatus": coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", "refuted"),
         "code": coding(ICD10, "J06.9", "急性上呼吸道感染")},
        {"resourceType": "AllergyIntolerance", "id": "a1", "patient": {"reference": "Patient/p1"},
         "code": {"text": "青霉素", **coding(SNOMED, "764146007", "Penicillin")}},
        {"resourceType": "AllergyIntolerance", "id": "a2", "patient": {"reference": "Patient/p1"},
         "verificationStatus": coding("http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                                      "refuted"),
         "code": {"text": "磺胺类"}},
        observation("egfr-old", "62238-1", 80, "mL/min/{1.73_m2}", "mL/min/{1.73_m2}", "2024-01-10"),
        observation("egfr-new", "98979-8", egfr, "mL/min/1.73m2", "mL/min/{1.73_m2}", "2025-03-20"),
        observation("weight", "29463-7", 134.5, "lb", "[lb_av]", "2025-03-20"),
        {"resourceType": "Observation", "id": "preg", "status": "final", "code": coding(LOINC, "82810-3"),
         "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2025-03-20",
         "valueCodeableConcept": coding(SNOMED, "60001007", "Not pregnant")},
    ]  # fmt: skip


def county_bundle(*requests: dict[str, Any], egfr: float = 24) -> dict[str, Any]:
    entries = [*county_resources(egfr), *(requests or (metformin_request(),))]
    return {
        "resourceType": "Bundle", "id": "county-1", "type": "collection",
        "entry": [{"fullUrl": f"http://his.example.cn/fhir/{r['resourceType']}/{r['id']}", "resource": r}
                  for r in entries],
    }  # fmt: skip


def metformin_tablet_request(rid: str = "mr1", dose: float = 1500) -> dict[str, Any]:
    """The same order naming a contained Medication: form (v3 TAB) and strength 500 mg per tablet."""
    request = metformin_request(rid, dose)
    del request["medicationCodeableConcept"]
    request["contained"] = [{
        "resourceType": "Medication", "id": "med1", "code": {"text": "盐酸二甲双胍片"},
        "form": coding("http://terminology.hl7.org/CodeSystem/v3-orderableDrugForm", "TAB", "Tablet"),
        "ingredient": [{"itemCodeableConcept": {"text": "metformin hydrochloride"},
                        "strength": {"numerator": {"value": 500, "unit": "mg", "system": UCUM, "code": "mg"},
                                     "denominator": {"value": 1, "unit": "TAB"}}}],
    }]  # fmt: skip
    request["medicationReference"] = {"reference": "#med1"}
    return request
