"""Convert the MIMIC-IV demo's prescriptions into CONTRACT prescriptions (JSON Lines).

MIMIC-IV (``hosp/prescriptions.csv.gz``) holds one row per medication order of a US hospital:
English drug names, US units (``mEq``, ``UNIT``, ``gm``…), routes such as ``PO/NG`` and the
frequency only as ``doses_per_24_hrs``. Orders of one admission, one provider and one start date
become one prescription (``visit_type: inpatient``), its date shifted back from MIMIC's
de-identified years (``anchor_year_group``); patients give sex and age (``anchor_age``
shifted to the order's year), ``omr`` the nearest weight, ``diagnoses_icd`` the admission's ICD-10
codes (ICD-9 codes are kept in ``diagnoses_icd9``, an extra field the audit ignores).

Nothing unknown is guessed and nothing crashes: an unknown unit, route or frequency is left out
of the item (the raw value kept as ``mimic_*``) and counted in the report; with a rulebook, drugs
it does not know are counted too. ``python -m rx_audit.adapters.mimic OUT.jsonl --data DIR [--rules rules]``.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import csv
import gzip
import json
import math
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

FACILITY = {"id": "MIMIC-BIDMC", "name": "Beth Israel Deaconess Medical Center (MIMIC-IV demo)", "level": "tertiary"}

UNITS = {
    "mg": "mg",
    "g": "g",
    "gm": "g",
    "mcg": "ug",
    "ug": "ug",
    "ml": "mL",
    "unit": "U",
    "units": "U",
    "iu": "IU",
    "tab": "tablet",
    "cap": "capsule",
}
ROUTES = {
    "PO": "po",
    "ORAL": "po",
    "PO/NG": "po",
    "NG": "po",
    # MIMIC writes a push as "IV BOLUS" and a continuous infusion as "IV DRIP"; plain "IV" is the
    # intermittent infusion (piggyback) of antibiotics and electrolytes — 静滴, not 静推: read as a
    # push it made 298 potassium chloride orders "critical: iv push" on the demo.
    "IV": "ivgtt",
    "IV BOLUS": "iv",
    "IV DRIP": "ivgtt",
    "IM": "im",
    "SC": "sc",
    "SUBCUT": "sc",
    "IH": "inh",
    "NEB": "inh",
    "INH": "inh",
    "TP": "top",
    "TD": "top",
    "PR": "pr",
    "SL": "sl",
}
FREQUENCIES = {1: "qd", 2: "bid", 3: "tid", 4: "qid", 6: "q4h"}
FORMS = {
    "tablet": "tablet",
    "capsule": "capsule",
    "iv": "injection",
    "ivgtt": "injection",
    "im": "injection",
    "sc": "injection",
    "inh": "inhaler",
}
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:-\s*(\d+(?:\.\d+)?))?\s*$")


@dataclass
class ConversionReport:
    prescriptions: int = 0
    items: int = 0
    rows_skipped: int = 0
    unknown_units: Counter[str] = field(default_factory=Counter)
    unknown_routes: Counter[str] = field(default_factory=Counter)
    unknown_frequencies: Counter[str] = field(default_factory=Counter)
    unreadable_doses: Counter[str] = field(default_factory=Counter)
    dose_ranges: int = 0
    unknown_drugs: Counter[str] = field(default_factory=Counter)
    icd9_codes: int = 0
    icd10_codes: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = dict(value.most_common(30)) if isinstance(value, Counter) else value
            if isinstance(value, Counter):
                out[f"{key}_total"] = sum(value.values())
        return out


def _rows(directory: Path, name: str) -> Iterator[dict[str, str]]:
    with gzip.open(directory / "hosp" / f"{name}.csv.gz", "rt", encoding="utf-8", newline="") as stream:
        yield from csv.DictReader(stream)


def _time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def icd10_dotted(code: str) -> str:
    code = code.strip().upper()
    return f"{code[:3]}.{code[3:]}" if len(code) > 3 else code


def _dose(row: dict[str, str], report: ConversionReport) -> tuple[dict[str, Any] | None, str | None]:
    raw_unit = (row.get("dose_unit_rx") or "").strip()
    raw_value = (row.get("dose_val_rx") or "").strip()
    unit = UNITS.get(raw_unit.lower())
    if not raw_value:
        return None, unit
    match = _NUMBER.match(raw_value.replace(",", ""))
    if match is None:
        report.unreadable_doses[raw_value] += 1
        return None, unit
    value = float(match.group(2) or match.group(1))  # a range "1-2": the upper end, counted
    report.dose_ranges += match.group(2) is not None
    if unit is None:
        report.unknown_units[raw_unit or "(empty)"] += 1
        return None, None
    return {"value": int(value) if value.is_integer() else value, "unit": unit}, unit


@dataclass
class _Context:
    """What an order needs from the other tables: the patient, weights by date, the admission's codes."""

    patients: dict[str, dict[str, str]]
    weights: dict[str, list[tuple[str, float]]]
    diagnoses: dict[str, list[dict[str, str]]]
    icd9: dict[str, list[dict[str, str]]]


def _context(directory: Path) -> _Context:
    weights: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for r in _rows(directory, "omr"):
        if r["result_name"].startswith("Weight (Lbs)"):
            with contextlib.suppress(ValueError):
                weights[r["subject_id"]].append((r["chartdate"], round(float(r["result_value"]) * 0.45359237, 1)))
    for series in weights.values():
        series.sort()
    names = {(r["icd_code"], r["icd_version"]): r["long_title"] for r in _rows(directory, "d_icd_diagnoses")}
    diagnoses: dict[str, list[dict[str, str]]] = defaultdict(list)
    icd9: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in sorted(_rows(directory, "diagnoses_icd"), key=lambda r: (r["hadm_id"], int(r["seq_num"] or 0))):
        entry = {"code": r["icd_code"], "name": names.get((r["icd_code"], r["icd_version"]), "")}
        if r["icd_version"] == "10":
            diagnoses[r["hadm_id"]].append({**entry, "code": icd10_dotted(r["icd_code"])})
        else:
            icd9[r["hadm_id"]].append(entry)
    patients = {r["subject_id"]: r for r in _rows(directory, "patients")}
    return _Context(patients=patients, weights=weights, diagnoses=diagnoses, icd9=icd9)


def _orders(directory: Path, report: ConversionReport) -> dict[tuple[str, str, str, str], list[dict[str, str]]]:
    """Orders of one admission, one provider and one start date: one prescription."""
    groups: dict[tuple[str, str, str, str], list[dict[str, str]]] = defaultdict(list)
    for row in _rows(directory, "prescriptions"):
        start = _time(row["starttime"])
        if start is None or not row["drug"].strip():
            report.rows_skipped += 1
            continue
        groups[
            (row["subject_id"], row["hadm_id"], row["order_provider_id"] or "UNKNOWN", start.date().isoformat())
        ].append(row)
    return groups


def _route_and_frequency(row: dict[str, str], item: dict[str, Any], report: ConversionReport) -> str | None:
    route_raw = (row.get("route") or "").strip().upper()
    route = ROUTES.get(route_raw)
    if route:
        item["route"] = route
    elif route_raw:
        report.unknown_routes[route_raw] += 1
        item["mimic_route"] = route_raw
    per_day = (row.get("doses_per_24_hrs") or "").strip()
    try:
        frequency = FREQUENCIES.get(int(float(per_day))) if per_day else None
    except ValueError:
        frequency = None
    if frequency:
        item["frequency"] = frequency
    elif per_day:
        report.unknown_frequencies[per_day] += 1
        item["mimic_doses_per_24_hrs"] = per_day
    return route


def _item(row: dict[str, str], position: int, report: ConversionReport,
          known_drug: Callable[[str], bool] | None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": str(position), "drug": row["drug"].strip()}
    dose, unit = _dose(row, report)
    if dose is not None:
        item["dose"] = dose
    elif row.get("dose_val_rx"):
        item["mimic_dose"] = f"{row['dose_val_rx']} {row.get('dose_unit_rx', '')}".strip()
    route = _route_and_frequency(row, item, report)
    form = FORMS.get(unit or "") or FORMS.get(route or "")
    if form:
        item["form"] = form
    stop, start = _time(row.get("stoptime") or ""), _time(row["starttime"])
    if stop and start and stop > start:
        item["days"] = max(1, math.ceil((stop - start).total_seconds() / 86400))
    if known_drug is not None and not known_drug(item["drug"]):
        report.unknown_drugs[item["drug"]] += 1
    return item


def _patient(subject: str, day: str, issued: datetime, context: _Context) -> dict[str, Any]:
    patient_row = context.patients.get(subject, {})
    patient: dict[str, Any] = {"id": f"MIMIC-{subject}", "sex": patient_row.get("gender") or "U"}
    with contextlib.suppress(KeyError, ValueError):
        patient["age_years"] = int(patient_row["anchor_age"]) + issued.year - int(patient_row["anchor_year"])
    series = context.weights.get(subject)
    if series:
        index = min(bisect.bisect_left(series, (day, 0.0)), len(series) - 1)
        patient["weight_kg"] = series[index][1]
    return patient


def _deidentified_back(moment: datetime, patient_row: dict[str, str]) -> datetime:
    """MIMIC shifts every date of a patient into 2100–2200; ``anchor_year_group`` says which real
    years ``anchor_year`` stands for. Shifting back by the difference keeps intervals and ages and
    gives an issue date an audit accepts (one in the future is refused as implausible)."""
    try:
        shift = int(patient_row["anchor_year"]) - int(patient_row["anchor_year_group"].split("-")[0])
    except (KeyError, ValueError, IndexError):
        shift = moment.year - 2010 if moment.year > 2100 else 0
    year = moment.year - shift
    day = 28 if moment.month == 2 and moment.day == 29 else moment.day
    return moment.replace(year=year, day=day)


def convert(
    directory: Path,
    *,
    known_drug: Callable[[str], bool] | None = None,
    report: ConversionReport | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield CONTRACT prescriptions; fill ``report`` with what could not be mapped."""
    report = report if report is not None else ConversionReport()
    context = _context(directory)
    for (subject, hadm, provider, day), rows in sorted(_orders(directory, report).items()):
        rows.sort(key=lambda r: (r["starttime"], r["pharmacy_id"]))
        issued = min(t for r in rows if (t := _time(r["starttime"])) is not None)
        items = [_item(row, position, report, known_drug) for position, row in enumerate(rows, start=1)]
        report.prescriptions += 1
        report.items += len(items)
        report.icd10_codes += len(context.diagnoses.get(hadm, []))
        report.icd9_codes += len(context.icd9.get(hadm, []))
        record: dict[str, Any] = {
            "id": f"MIMIC-{hadm or subject}-{provider}-{day}",
            "issued_at": _deidentified_back(issued, context.patients.get(subject, {})).isoformat(),
            "visit_type": "inpatient",
            "facility": FACILITY,
            "prescriber": {"id": provider},
            "department": "inpatient",
            "patient": _patient(subject, day, issued, context),
            "diagnoses": context.diagnoses.get(hadm, []),
            "items": items,
            "source": "MIMIC-IV Clinical Database Demo 2.2 (ODbL)",
        }
        if context.icd9.get(hadm):
            record["diagnoses_icd9"] = context.icd9[hadm]
        yield record


def write_jsonl(out: Path, directory: Path, *, rules: Path | None = None) -> ConversionReport:
    """Convert to ``out`` (JSON Lines); returns the report of what could not be mapped."""
    known = None
    if rules is not None:
        from rx_audit.rulebook import load_rulebook

        rulebook = load_rulebook(rules)
        known = lambda name: rulebook.drug_for(name) is not None  # noqa: E731
    report = ConversionReport()
    with open(out, "w", encoding="utf-8") as stream:
        for record in convert(directory, known_drug=known, report=report):
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="the mimic-iv-demo folder (shared/data/mimic-iv-demo)")
    parser.add_argument("--rules", type=Path, default=None, help="count drugs this rulebook does not know")
    args = parser.parse_args(argv)
    report = write_jsonl(args.out, args.data, rules=args.rules)
    json.dump(report.to_dict(), sys.stderr, ensure_ascii=False, indent=1)
    sys.stderr.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
