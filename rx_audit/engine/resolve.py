"""Resolve and normalise: a validated prescription turned into what rules compare.

The second stage of the audit (parse → **resolve** → facts → evaluate → explain): drug identity
through the rulebook's names, doses in the drug's unit, daily totals, frequency codes, route and
form groups, age at issue, ICD prefixes, allergens read from the allergy text, and which texts
mixed scripts. Nothing here knows durable_rules; the service, the dictionary import and replay
can use a :class:`ResolvedPrescription` as well.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

from rx_audit.contract import Item, Prescription
from rx_audit.normalise import (
    TIMES_PER_DAY,
    dose_in_unit,
    icd_prefixes,
    normalise_form,
    normalise_frequency,
    normalise_icd,
    normalise_route,
    normalise_title,
    supply_days,
)
from rx_audit.rulebook import Drug, Rulebook, normalise_name
from rx_audit.rulebook.names import NON_DRUG_ALLERGENS, allergen_parts

# Forms and routes that act where they are applied. Inhalers count as local here: a rule about an
# inhaled drug's systemic effect simply does not ask for `systemic`.
LOCAL_FORMS = frozenset({"topical", "ophthalmic", "nasal", "inhalation"})
LOCAL_ROUTES = frozenset({"top", "oph", "nas", "inh", "vag"})


@dataclass(frozen=True)
class ResolvedItem:
    """One item as the rules see it; ``raw_*`` keep what the HIS wrote when it could not be read."""

    id: str
    drug_text: str
    drug: Drug | None
    has_dose: bool
    has_freq: bool
    has_route: bool
    has_days: bool
    has_form: bool
    form: str | None = None
    form_group: str | None = None
    release: str | None = None
    raw_form: str | None = None
    route: str | None = None
    raw_route: str | None = None
    freq: str | None = None
    raw_freq: str | None = None
    times_per_day: float | None = None
    dose: float | None = None  # per administration, in the drug's unit
    raw_dose: str | None = None  # the written dose, when it could not be converted
    daily: float | None = None
    days: float | None = None
    systemic: bool = True
    mixed_text: tuple[str, ...] = ()  # fields of this item whose text mixed scripts
    supply_days: float | None = None  # how long the quantity dispensed lasts at the written dose
    quantity_unusable: bool = False  # a quantity was written but its unit does not meet the dose's


@dataclass(frozen=True)
class ResolvedPrescription:
    prescription: Prescription
    age: float | None
    sex: str | None
    weight: float | None
    egfr: float | None
    pregnant: bool | None  # a man is not pregnant: False, not unknown
    lactating: bool | None
    hepatic: str | None
    dx_codes: tuple[str, ...]  # as written, for findings
    dx_tokens: tuple[str, ...]  # every prefix of every code, and "=code" for the code itself
    allergy_ids: frozenset[str]
    allergy_text: dict[str, str]  # allergy id -> the text it was read from
    allergies_unread: tuple[str, ...]  # allergens named that are neither a drug, a class nor a non-drug
    allergies_recorded: bool
    items: tuple[ResolvedItem, ...]
    mixed_text: tuple[str, ...] = ()  # prescription-level fields whose text mixed scripts
    title: str | None = None  # the prescriber's title, normalised (village_doctor … chief)
    title_text: str | None = None  # as written
    privileges: tuple[str, ...] | None = None  # None: the HIS sent none


@lru_cache(maxsize=4096)
def _form(text: str) -> tuple[str, str] | None:
    form = normalise_form(text)
    return (form.group, form.release) if form else None


_route = lru_cache(maxsize=1024)(normalise_route)
_frequency = lru_cache(maxsize=1024)(normalise_frequency)


def systemic(form_group: str | None, route: str | None) -> bool:
    """Unless the form (or, without a known form, the route) is local; unknown counts as systemic."""
    if form_group is not None:
        return form_group not in LOCAL_FORMS
    return route not in LOCAL_ROUTES


def _written_dose(item: Item) -> str:
    assert item.dose is not None
    written = f"{_plain(item.dose.value)}{item.dose.unit}"
    if item.strength:
        return written + f"（规格 {_plain(item.strength.value)}{item.strength.unit}）"
    return written + "（无规格）"


def _plain(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 5)


def _dose(item: Item, drug: Drug | None) -> tuple[float | None, str | None]:
    if item.dose is None or drug is None:
        return None, None
    strength = (item.strength.value, item.strength.unit) if item.strength else None
    converted = dose_in_unit(item.dose.value, item.dose.unit, drug.unit, strength)
    return (converted, None) if converted is not None else (None, _written_dose(item))


def _supply(item: Item, freq: str | None, times: float | None) -> tuple[float | None, bool]:
    if item.quantity is None or item.dose is None or times is None or freq in ("prn", "st"):
        return None, False
    if item.quantity.value <= 1:
        # One pen, bottle or tube is the least that can be dispensed: not an oversupply (一支胰岛素笔
        # 300 IU at 18 IU a day lasts 16 days, whatever the days written).
        return None, False
    strength = (item.strength.value, item.strength.unit) if item.strength else None
    days = supply_days((item.quantity.value, item.quantity.unit), (item.dose.value, item.dose.unit), strength, times)
    return days, days is None


def resolve_item(item: Item, rulebook: Rulebook, mixed: tuple[str, ...] = (), facility: str | None = None
                 ) -> ResolvedItem:
    # The HIS's own code first, through the facility's imported formulary (CONTRACT §1), then the name.
    drug = rulebook.drug_for_code(facility, item.code) or rulebook.drug_for(item.drug, item.atc)
    form = _form(item.form) if item.form else None
    route = _route(item.route) if item.route else None
    freq = _frequency(item.frequency) if item.frequency else None
    times = TIMES_PER_DAY[freq] if freq is not None else None
    dose, raw_dose = _dose(item, drug)
    supply, quantity_unusable = _supply(item, freq, times)
    return ResolvedItem(
        id=str(item.id), drug_text=item.drug, drug=drug,
        has_dose=item.dose is not None, has_freq=bool(item.frequency), has_route=bool(item.route),
        has_days=item.days is not None, has_form=bool(item.form),
        form=item.form or None, form_group=form[0] if form else None, release=form[1] if form else None,
        raw_form=item.form if item.form and form is None else None,
        route=route, raw_route=item.route if item.route and route is None else None,
        freq=freq, raw_freq=item.frequency if item.frequency and freq is None else None, times_per_day=times,
        dose=dose, raw_dose=raw_dose, daily=dose * times if dose is not None and times is not None else None,
        days=item.days, systemic=systemic(form[0] if form else None, route), mixed_text=mixed,
        supply_days=supply, quantity_unusable=quantity_unusable,
    )


def _allergens_of(text: str, rulebook: Rulebook) -> list[str] | None:
    """Allergy ids one written allergen means, or None when it is neither a drug, a class nor a known non-drug."""
    found = list(rulebook.allergy_names.get(normalise_name(text), []))
    drug = rulebook.drug_for(text)
    if drug is not None:
        found.extend(drug.allergy_implied)
    if found or normalise_name(text) in NON_DRUG_ALLERGENS:
        return found
    return None


def _allergies(texts: list[str], rulebook: Rulebook) -> tuple[frozenset[str], dict[str, str], tuple[str, ...]]:
    """Allergy ids, the text each was read from, and the texts that could not be read (said, never dropped)."""
    ids: set[str] = set()
    source: dict[str, str] = {}
    unread: list[str] = []
    for text in texts:
        # The entry as written first (青霉素), then its allergens read out of the wording around them
        # (青霉素(过敏性休克), 阿莫西林皮试阳性, 头孢类、喹诺酮类过敏).
        whole = _allergens_of(text, rulebook)
        named = allergen_parts(text)
        parts = [("、".join(named) or text, whole)] if whole is not None else [
            (part, _allergens_of(part, rulebook)) for part in named]
        for part, found in parts:
            if found is None:
                unread.append(part)
                continue
            for allergy_id in found:
                ids.add(allergy_id)
                source.setdefault(allergy_id, part)  # the allergen as named, without "过敏"/reaction
    return frozenset(ids), source, tuple(dict.fromkeys(unread))


def resolve(prescription: Prescription, rulebook: Rulebook) -> ResolvedPrescription:
    """Everything the rules compare, read once from the prescription."""
    patient = prescription.patient
    mixed: dict[int | None, list[str]] = defaultdict(list)
    for note in prescription.text_notes:
        head = note.path.partition(".")[0]
        position = int(head[6:-1]) if head.startswith("items[") and head.endswith("]") else None
        mixed[position].append(note.path)
    dx_codes = tuple(d.code for d in prescription.diagnoses if d.code and normalise_icd(d.code))
    dx_tokens: list[str] = []
    for code in dx_codes:
        dx_tokens.extend(icd_prefixes(code))
        dx_tokens.append("=" + normalise_icd(code))
    allergy_ids, allergy_text, unread = _allergies(patient.allergies, rulebook)
    male = patient.sex == "M"
    return ResolvedPrescription(
        prescription=prescription,
        age=prescription.age_years_at_issue(),
        sex=patient.sex if patient.sex in ("M", "F") else None,
        weight=patient.weight_kg,
        egfr=patient.egfr,
        pregnant=patient.pregnant if patient.pregnant is not None else (False if male else None),
        lactating=patient.lactating if patient.lactating is not None else (False if male else None),
        hepatic=patient.hepatic_impairment,
        dx_codes=dx_codes,
        dx_tokens=tuple(dict.fromkeys(dx_tokens)),
        allergy_ids=allergy_ids,
        allergy_text=allergy_text,
        allergies_unread=unread,
        allergies_recorded="allergies" in patient.model_fields_set,
        items=tuple(resolve_item(item, rulebook, tuple(mixed.get(position, ())), prescription.facility.id)
                    for position, item in enumerate(prescription.items)),
        mixed_text=tuple(mixed.get(None, ())),
        title=normalise_title(prescription.prescriber.title) if prescription.prescriber.title else None,
        title_text=prescription.prescriber.title,
        privileges=tuple(prescription.prescriber.privileges) if prescription.prescriber.privileges is not None
        else None,
    )
