"""FHIR R4 Bundle → CONTRACT prescription, and audit result → DetectedIssue (rx_audit.adapters.fhir)."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest

from rx_audit import Auditor, PrescriptionError, parse_prescription
from rx_audit.adapters import fhir
from rx_audit.adapters.fhir import detected_issues, prescription_from_bundle, validate_bundle
from tests.adapters.fhir_data import (
    UCUM,
    county_bundle,
    example_bundle,
    example_requests,
    metformin_request,
    synthea_bundles,
)

pytest.importorskip("fhir.resources")


def _map_and_audit(bundle: dict[str, Any], auditor: Auditor) -> tuple[dict[str, Any], Any]:
    record = prescription_from_bundle(bundle)
    parse_prescription(record)  # the contract accepts what the adapter wrote
    return record, auditor.audit(record)


# --------------------------------------------------------------------------- a complete bundle


def test_county_bundle_maps_every_field(auditor: Auditor) -> None:
    record = prescription_from_bundle(county_bundle())
    assert record["id"] == "MNS-20250326-000123"  # the MedicationRequests' group identifier
    assert record["issued_at"] == "2025-03-26T10:15:00+08:00"
    assert record["visit_type"] == "outpatient"
    assert record["facility"] == {"id": "LZH", "name": "凉州户镇分院"}
    assert record["prescriber"] == {"id": "D007", "name": "赵明红"}
    patient = record["patient"]
    assert patient["sex"] == "F" and patient["birth_date"] == "1972-05-02"
    assert patient["egfr"] == 24  # the latest of two eGFR Observations
    assert patient["weight_kg"] == pytest.approx(61.01, abs=0.01)  # 134.5 [lb_av]
    assert patient["pregnant"] is False
    assert patient["allergies"] == ["青霉素"]  # the refuted sulfonamide allergy is not read
    assert record["diagnoses"] == [{"code": "E11.900", "name": "2型糖尿病"}, {"name": "Essential hypertension"}]
    assert record["items"] == [{
        "id": "mr1", "fhir_reference": "MedicationRequest/mr1", "drug": "盐酸二甲双胍片", "atc": "A10BA02",
        "dose": {"value": 1500, "unit": "mg"}, "frequency": "tid", "route": "po", "days": 30,
        "quantity": {"value": 90, "unit": "片"},
    }]  # fmt: skip
    assert record["fhir_lost"] == ["diagnoses: 'Essential hypertension' has no ICD-10 code (kept as text)"]
    result = auditor.audit(record)
    assert result.severity == "critical"
    assert "metformin.contra.egfr_lt_30" in {f.rule for f in result.findings}
    assert parse_prescription(record).age_years_at_issue() == pytest.approx(52.9, abs=0.1)


def test_parameters_win_and_nothing_is_invented() -> None:
    bare = {
        "resourceType": "Bundle", "id": "b1", "type": "collection",
        "entry": [{"resource": {
            "resourceType": "MedicationRequest", "id": "x", "status": "draft", "intent": "order",
            "subject": {"reference": "Patient/nobody"}, "medicationCodeableConcept": {"text": "Amoxicillin 500 mg"},
            "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": 2}}]}],
        }}],
    }  # fmt: skip
    record = prescription_from_bundle(bare, facility={"id": "F1", "level": "township"}, prescription_id="RX-9")
    assert record["id"] == "RX-9" and record["facility"] == {"id": "F1", "level": "township"}
    assert record["patient"] == {"id": "nobody"}  # no Patient resource: no sex, age, weight guessed
    assert record["diagnoses"] == [] and "issued_at" not in record and "prescriber" not in record
    assert "dose" not in record["items"][0]  # a dose without a unit is left out, and said so
    assert record["fhir_lost"] == ["items[x].dose: 2 without a unit"]
    parse_prescription(record)


def test_an_egfr_in_the_wrong_unit_is_not_read() -> None:
    bundle = county_bundle()
    for entry in bundle["entry"]:
        if entry["resource"]["id"] == "egfr-new":
            entry["resource"]["valueQuantity"] = {"value": 24, "unit": "mL/min", "system": UCUM, "code": "mL/min"}
    record = prescription_from_bundle(bundle)
    assert "egfr" not in record["patient"]
    assert any(line.startswith("patient.egfr: unit 'mL/min'") for line in record["fhir_lost"])


@pytest.mark.parametrize(("comparator", "expected"), [(">", 90), (">=", 90), ("<", None)])
def test_an_egfr_with_a_comparator(comparator: str, expected: int | None) -> None:
    bundle = county_bundle()
    for entry in bundle["entry"]:
        if entry["resource"]["id"] == "egfr-new":
            entry["resource"]["valueQuantity"].update(value=90, comparator=comparator)
    assert prescription_from_bundle(bundle)["patient"].get("egfr") == expected


def test_pregnancy_from_a_condition() -> None:
    bundle = county_bundle()
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["id"] != "preg"]
    bundle["entry"].append({"resource": {
        "resourceType": "Condition", "id": "c9", "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "Z33", "display": "Pregnant state"}]},
    }})  # fmt: skip
    assert prescription_from_bundle(bundle)["patient"]["pregnant"] is True


@pytest.mark.parametrize(
    ("dosage", "expected"),
    [
        ({"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}}, "qd"),
        ({"timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}}}, "bid"),
        ({"timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}}}, "tid"),
        ({"timing": {"repeat": {"frequency": 4, "period": 1, "periodUnit": "d"}}}, "qid"),
        ({"timing": {"repeat": {"frequency": 1, "period": 4, "periodUnit": "h"}}}, "q4h"),
        ({"timing": {"repeat": {"frequency": 1, "period": 6, "periodUnit": "h"}}}, "q6h"),
        ({"timing": {"repeat": {"frequency": 1, "period": 8, "periodUnit": "h"}}}, "q8h"),
        ({"timing": {"repeat": {"frequency": 1, "period": 12, "periodUnit": "h"}}}, "q12h"),
        ({"timing": {"repeat": {"frequency": 1, "period": 2, "periodUnit": "d"}}}, "qod"),
        ({"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk"}}}, "qw"),
        ({"timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "wk"}}}, "biw"),
        ({"timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "wk"}}}, "tiw"),
        ({"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d", "when": ["HS"]}}}, "qn"),
        ({"timing": {"code": {"coding": [{"code": "BID"}]}}}, "bid"),
        ({"asNeededBoolean": True, "timing": {"repeat": {"frequency": 1, "period": 4, "periodUnit": "h"}}}, "prn"),
        ({"timing": {"repeat": {"frequency": 1, "period": 3, "periodUnit": "wk"}}}, None),
        ({"timing": {"repeat": {"frequency": 1, "period": 15, "periodUnit": "min"}}}, None),
    ],
)
def test_frequency(dosage: dict[str, Any], expected: str | None) -> None:
    assert fhir._frequency(dosage) == expected


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ({"coding": [{"system": "http://snomed.info/sct", "code": "26643006"}]}, "po"),
        ({"coding": [{"system": "http://snomed.info/sct", "code": "47625008"}]}, "iv"),
        ({"coding": [{"system": "http://snomed.info/sct", "code": "78421000"}]}, "im"),
        ({"coding": [{"system": "http://snomed.info/sct", "code": "34206005"}]}, "sc"),
        ({"coding": [{"system": "http://snomed.info/sct", "code": "6064005"}]}, "top"),
        ({"coding": [{"system": "http://snomed.info/sct", "code": "18679011000001101"}]}, "inh"),
        ({"coding": [{"system": "http://snomed.info/sct", "code": "447694001"}]}, "inh"),
        ({"text": "口服"}, "po"),
        ({"coding": [{"system": "http://snomed.info/sct", "code": "54485002", "display": "Ophthalmic route"}]}, None),
    ],
)
def test_route(route: dict[str, Any], expected: str | None) -> None:
    assert fhir._route({"route": route}) == expected


# --------------------------------------------------------------------------- errors


def test_invalid_fhir_names_the_path() -> None:
    bundle = county_bundle()
    del bundle["entry"][-1]["resource"]["medicationCodeableConcept"]
    with pytest.raises(PrescriptionError) as caught:
        prescription_from_bundle(bundle)
    assert caught.value.field == "Bundle.entry[12].resource (MedicationRequest/mr1)"
    assert "medicationCodeableConcept" in caught.value.message


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"authoredOn": "2025-13-45"}, "Bundle.entry[12].resource.authoredOn (MedicationRequest/mr1)"),
        ({"dispenseRequest": {"quantity": {"value": "lots"}}},
         "Bundle.entry[12].resource.dispenseRequest.quantity.value (MedicationRequest/mr1)"),
        ({"unknownField": 1}, "Bundle.entry[12].resource.unknownField (MedicationRequest/mr1)"),
        ({"status": 5}, "Bundle.entry[12].resource.status (MedicationRequest/mr1)"),
    ],
)
def test_invalid_values_name_the_path(change: dict[str, Any], field: str) -> None:
    with pytest.raises(PrescriptionError) as caught:
        validate_bundle(county_bundle(metformin_request(**change)))
    assert caught.value.field == field and caught.value.prescription_id == "county-1"


def test_code_bindings_are_not_checked_by_fhir_resources() -> None:
    # fhir.resources checks structure and types, not value sets: an unknown status passes.
    validate_bundle(county_bundle(metformin_request(status="signed")))


@pytest.mark.parametrize(
    "bundle",
    [
        {"resourceType": "Patient", "id": "p"},
        "not a bundle",
        {"resourceType": "Bundle", "id": "b", "type": "collection", "entry": []},
    ],
)
def test_not_a_prescription_bundle(bundle: Any) -> None:
    with pytest.raises(PrescriptionError):
        prescription_from_bundle(bundle)


def test_several_patients_are_refused() -> None:
    other = metformin_request("mr2", subject={"reference": "Patient/p2"})
    with pytest.raises(PrescriptionError) as caught:
        prescription_from_bundle(county_bundle(metformin_request(), other))
    assert caught.value.field == "MedicationRequest.subject"


# --------------------------------------------------------------------------- the published examples


def test_all_r4_examples_map_and_audit(auditor: Auditor) -> None:
    requests = example_requests()
    assert len(requests) == 40
    lost: Counter[str] = Counter()
    unknown = 0
    for request in requests:
        record, result = _map_and_audit(example_bundle(request), auditor)
        assert record["items"][0]["drug"] and record["patient"] == {"id": "pat1", "sex": "M"}
        assert record["issued_at"] and record["items"][0]["id"] == request["id"]
        lost.update(line.split(":")[0].split(".")[-1] if "." in line.split(":")[0] else "dosage" for line in
                    record["fhir_lost"])  # fmt: skip
        unknown += any(f.rule == "completeness.unknown_drug" for f in result.findings)
    # What the published examples lose (see the module docstring): counted, so a change is seen.
    assert lost == Counter({"frequency": 7, "dosage": 5, "route": 2, "dose": 2})
    assert unknown == 23  # brand names (Tylenol PM, Lantus…) and products the rulebook lacks


def test_all_r4_examples_in_one_bundle(auditor: Auditor) -> None:
    requests = example_requests()
    bundle = example_bundle(requests[0])
    bundle["entry"] += [{"resource": r} for r in requests[1:]]
    record, result = _map_and_audit(bundle, auditor)
    assert record["id"] == bundle["id"] and len(record["items"]) == 40
    assert {f.item for f in result.findings if f.item} <= {r["id"] for r in requests}


def test_all_synthea_requests_map_and_audit(auditor: Auditor) -> None:
    bundles = synthea_bundles()
    counts: Counter[str] = Counter()
    for bundle in bundles:
        record, result = _map_and_audit(bundle, auditor)
        counts["items"] += len(record["items"])
        counts["dose_without_unit"] += sum(line.endswith("without a unit") for line in record["fhir_lost"])
        counts["dose"] += sum("dose" in item for item in record["items"])
        counts["frequency"] += sum("frequency" in item for item in record["items"])
        counts["unknown_drug"] += sum(f.rule == "completeness.unknown_drug" for f in result.findings)
    assert len(bundles) == 273 and counts["items"] == 359
    assert counts["dose"] == 0 and counts["dose_without_unit"] == 66  # Synthea doses carry no unit
    assert counts["frequency"] == 106 and counts["unknown_drug"] == 130


# --------------------------------------------------------------------------- DetectedIssue


def test_detected_issues_validate_and_point_at_the_order(auditor: Auditor) -> None:
    bundle = county_bundle(metformin_request(dose=1500), metformin_request("mr2", dose=500))
    record = prescription_from_bundle(bundle, prescription_id="RX-2")
    result = auditor.audit(record)
    issues = detected_issues(result, bundle, patient="Patient/p1")  # validated with fhir.resources inside
    assert len(issues) == len(result.findings)
    by_rule = {i["identifier"][0]["value"]: i for i in issues}
    contra = by_rule["metformin.contra.egfr_lt_30"]
    assert contra["status"] == "final" and contra["severity"] == "high"
    assert contra["code"]["coding"][0] == {"system": fhir.CATEGORY_SYSTEM, "code": "contraindication",
                                            "display": "用药禁忌"}  # fmt: skip
    assert contra["implicated"][0]["reference"] in {"MedicationRequest/mr1", "MedicationRequest/mr2"}
    assert contra["detail"] == next(f.message for f in result.findings if f.rule == "metformin.contra.egfr_lt_30")
    urls = {e["url"].rsplit("/", 1)[-1]: e["valueString"] for e in contra["extension"]}
    assert urls["rx-audit-source"].startswith("rules/") and urls["rx-audit-rulebook"] == result.rulebook
    assert "rx-audit-clinical-reference" in urls
    assert {i["severity"] for i in issues} <= {"high", "moderate", "low"}
    assert len({i["id"] for i in issues}) == len(issues)
    assert detected_issues(result, bundle) == detected_issues(result.to_contract(), bundle)  # ids are stable


def test_detected_issues_from_ids() -> None:
    result = {"id": "RX", "flagged": True, "severity": "warning", "rulebook": "sha256:x", "findings": [
        {"rule": "r.a", "category": "dose", "severity": "warning", "item": "2", "message": "m", "source": "f:1",
         "reference": "https://example.org/label"},
        {"rule": "r.b", "category": "completeness", "severity": "info", "message": "whole", "source": "f:2"},
    ]}  # fmt: skip
    by_position = detected_issues(result, ["a", "MedicationRequest/b"])
    assert by_position[0]["implicated"] == [{"reference": "MedicationRequest/b"}]
    assert by_position[0]["reference"] == "https://example.org/label"
    assert "implicated" not in by_position[1] and by_position[1]["severity"] == "low"
    assert detected_issues(result, {"2": "urn:uuid:1234"})[0]["implicated"] == [{"reference": "urn:uuid:1234"}]


def test_a_request_without_id_is_referenced_by_its_full_url(auditor: Auditor) -> None:
    first, second = metformin_request("a"), metformin_request("b")
    del first["id"], second["id"]
    bundle = {"resourceType": "Bundle", "id": "b", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:0a5b5e2c-0000-4000-8000-000000000001", "resource": first},
        {"fullUrl": "urn:uuid:0a5b5e2c-0000-4000-8000-000000000002", "resource": second}]}  # fmt: skip
    record = prescription_from_bundle(bundle)
    assert [i["id"] for i in record["items"]] == ["1", "2"]
    assert record["items"][1]["fhir_reference"] == "urn:uuid:0a5b5e2c-0000-4000-8000-000000000002"
    issues = detected_issues(auditor.audit(record), bundle)
    implicated = {i["implicated"][0]["reference"] for i in issues if "implicated" in i}
    assert implicated and implicated <= {e["fullUrl"] for e in bundle["entry"]}


def test_the_input_bundle_is_not_changed() -> None:
    bundle = county_bundle()
    before = copy.deepcopy(bundle)
    prescription_from_bundle(bundle)
    assert bundle == before


def test_import_rx_audit_does_not_load_fhir_resources() -> None:
    import subprocess
    import sys

    code = "import sys, rx_audit, rx_audit.adapters.fhir, rx_audit.adapters.cds_hooks; print('fhir' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
