"""Facts: a resolved prescription written as the JSON facts durable_rules matches.

Three kinds of fact: ``rx`` (the prescription as a whole, for the global rules), ``item`` (one per
item, into the global ruleset and into its drug's ruleset with the clinical fields), ``pair`` (two
items some pair rule could match). A value a rule may not read — missing, not finite, too large
for durable's integers — is *omitted*, never ``None``: durable's ``$nex`` then fires the rule's
missing-data twin.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from rx_audit.engine.resolve import ResolvedItem, ResolvedPrescription
from rx_audit.rulebook import Drug, Rulebook
from rx_audit.rulebook.compile_classes import ATC_KEY, CLASS_RULESET, INGREDIENT_KEY

_FACT_NUMBERS = itertools.count(1)
_LARGEST = 1e15
TIER_RANK = {"unrestricted": 1, "restricted": 2, "special": 3}
TIER_ZH = {"unrestricted": "非限制使用级", "restricted": "限制使用级", "special": "特殊使用级"}
# Rights a hospital grants beyond the title (CONTRACT §1 prescriber.privileges).
_PRIVILEGE_TIER = {"antibacterial_restricted": 2, "antibacterial_special": 3}


@dataclass
class Facts:
    """What one prescription asserts: facts per logical ruleset, plus what findings show but rules never read."""

    batches: dict[str, list[dict[str, Any]]]
    dx_codes: list[str]
    allergy_text: dict[str, str]


def durable_number(value: float | None) -> float | int | None:
    """A number durable_rules reads correctly, or ``None`` (treated as missing) when there is none.

    durable_rules 2.0.28 misreads exponent notation and can crash on it, and orjson writes floats
    below 1e-5 that way (``1e-6``): fractions are rounded to 5 decimals. Integers stay integers
    (evidence reads 500, not 500.0); a value beyond 1e15 would overflow the engine's integers.
    """
    if value is None or not math.isfinite(value) or abs(value) >= _LARGEST:
        return None
    if isinstance(value, int):
        return value
    return int(value) if value.is_integer() else round(value, 5)


def _put(fact: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        fact[key] = value


def _common(resolved: ResolvedPrescription, number: int, rulebook: Rulebook) -> dict[str, Any]:
    """Scalars every ruleset may read (custom rules included)."""
    prescription = resolved.prescription
    common: dict[str, Any] = {"n": number, "visit": prescription.visit_type}
    for key, value in (("age", resolved.age), ("weight", resolved.weight), ("egfr", resolved.egfr)):
        _put(common, key, durable_number(value))
    _put(common, "sex", resolved.sex)
    for key, flag in (("pregnant", resolved.pregnant), ("lactating", resolved.lactating)):
        if flag is not None:
            common[key] = int(flag)
    for key, text in (("hepatic", resolved.hepatic), ("facility", prescription.facility.id),
                      ("facility_level", prescription.facility.level), ("department", prescription.department),
                      ("prescriber", prescription.prescriber.id)):
        _put(common, key, text)
    common["dx_count"] = len(resolved.dx_codes)
    _privileges(common, resolved, rulebook)
    common["has_formulary"] = int(prescription.facility.id in rulebook.formularies)
    return common


def _privileges(common: dict[str, Any], resolved: ResolvedPrescription, rulebook: Rulebook) -> None:
    """The antibacterial tier the prescriber may prescribe (title, then granted rights) and the rights."""
    _put(common, "title_text", resolved.title_text)
    policy = rulebook.settings.privileges
    ranks = [_PRIVILEGE_TIER[p] for p in resolved.privileges or () if p in _PRIVILEGE_TIER]
    if policy is not None and resolved.title is not None and resolved.title in policy.antibacterial_tier_by_title:
        ranks.append(TIER_RANK[policy.antibacterial_tier_by_title[resolved.title]])
    if ranks:
        common["tier_allowed"] = max(ranks)
    common["privileges_recorded"] = int(resolved.privileges is not None)
    # "-" keeps the list non-empty: durable's allItems is false on an empty list.
    common["privileges"] = [*(resolved.privileges or ()), "-"]


def _item_fact(item: ResolvedItem, weight: float | None, rulebook: Rulebook) -> dict[str, Any]:
    fact: dict[str, Any] = {
        "t": "item", "item": item.id, "drug_text": item.drug_text, "known": int(item.drug is not None),
        "has_dose": int(item.has_dose), "has_freq": int(item.has_freq), "has_route": int(item.has_route),
        "has_days": int(item.has_days), "has_form": int(item.has_form), "sys": int(item.systemic),
    }
    if item.mixed_text:
        fact["text_mixed"] = 1
        fact["text_fields"] = "、".join(item.mixed_text)
    for key in ("form", "form_group", "release", "raw_form", "route", "raw_route", "freq", "raw_freq", "raw_dose"):
        _put(fact, key, getattr(item, key))
    _put(fact, "times_per_day", item.times_per_day)
    _put(fact, "days", durable_number(item.days))
    if item.drug is None:
        fact["drug"] = ""
        return fact
    fact["drug"] = item.drug.id
    fact["chronic"] = int(item.drug.chronic)
    fact["monograph"] = int(item.drug.monograph)
    fact["kind"] = item.drug.kind
    if item.drug.antibacterial_tier:
        fact["tier_rank"] = TIER_RANK[item.drug.antibacterial_tier]
        fact["tier"] = TIER_ZH[item.drug.antibacterial_tier]
    if item.drug.control:
        fact["controls"] = list(item.drug.control)
    # The facilities whose formulary lists the drug ("-": durable's allItems is false on an empty list).
    fact["formularies"] = [*rulebook.in_formularies.get(item.drug.id, ()), "-"]
    _quantity(fact, item, rulebook)
    dose = durable_number(item.dose)
    if dose is not None:
        fact["dose"] = dose
        _put(fact, "daily", durable_number(item.daily))
        if weight is not None:
            _put(fact, "dose_per_kg", durable_number(dose / weight))
            if "daily" in fact:
                _put(fact, "daily_per_kg", durable_number(fact["daily"] / weight))
    return fact


def _quantity(fact: dict[str, Any], item: ResolvedItem, rulebook: Rulebook) -> None:
    """Days the quantity lasts, and how many days of it the written days tolerate (pack rounding)."""
    policy = rulebook.settings.quantity
    if policy is None:
        return
    if item.quantity_unusable:
        fact["qty_unusable"] = 1
    _put(fact, "supply_days", durable_number(round(item.supply_days, 2)) if item.supply_days is not None else None)
    if item.days is not None:
        tolerated = item.days * policy.tolerance_ratio + policy.tolerance_days
        _put(fact, "days_tolerated", durable_number(round(tolerated, 2)))


def may_pair(rulebook: Rulebook, first: Drug, second: Drug) -> bool:
    """Whether any pair rule could match these two drugs, in either order."""
    first_keys, second_keys = rulebook.pair_keys[first.id], rulebook.pair_keys[second.id]
    partners = rulebook.pair_partners
    return any(not partners.get(key, frozenset()).isdisjoint(second_keys) for key in first_keys) or any(
        not partners.get(key, frozenset()).isdisjoint(first_keys) for key in second_keys
    )


def _pair_facts(rulebook: Rulebook, number: int, known: list[tuple[dict[str, Any], Drug]]
                ) -> list[tuple[str, dict[str, Any]]]:
    """(logical ruleset, fact) for the pairs of items: same-ingredient repeats, then keyed pairs."""
    out: list[tuple[str, dict[str, Any]]] = []
    # The same drug written again: one fact per repeat, against its previous occurrence (linear).
    # A once-only dose (st: a loading dose, 氯吡格雷 300 mg st then 75 mg qd) and the same drug in
    # another route of action (左氧氟沙星片 and 左氧氟沙星滴眼液) are not a duplicate.
    last_of: dict[tuple[str, str], dict[str, Any]] = {}
    for fact, drug in known:
        if fact.get("freq") == "st" or drug.id in rulebook.not_duplicated:
            continue
        where = (drug.id, fact_local(fact))
        previous = last_of.get(where)
        if previous is not None:
            out.append(("global", {"t": "pair", "n": number, "key": "", "a_item": previous["item"],
                                   "b_item": fact["item"], "a_drug": drug.id, "b_drug": drug.id, "same": 1}))
        last_of[where] = fact
    out.extend(_ingredient_facts(rulebook, number, known))
    out.extend(_atc_facts(rulebook, number, known))
    for index, (first, first_drug) in enumerate(known):
        for second, second_drug in known[index + 1 :]:
            # The same drug twice is the duplicate above; it does not interact with itself.
            if first_drug.id == second_drug.id or not may_pair(rulebook, first_drug, second_drug):
                continue
            # One fact per orientation and per key of its first drug that some rule pairs with a
            # key of the second.
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
                    out.append(("global" if rulebook.pairs_in_global else rulebook.ruleset_for(f"pair:{key}"), pair))
    return out


def ingredients(drug: Drug) -> tuple[str, ...]:
    return drug.ingredients or (drug.id,)


def _ingredient_facts(rulebook: Rulebook, number: int, known: list[tuple[dict[str, Any], Drug]]
                      ) -> list[tuple[str, dict[str, Any]]]:
    """Two different products with an ingredient in common: one fact per shared ingredient, durable
    compares it with the other product's ingredients (the same drug twice is the duplicate above)."""
    out: list[tuple[str, dict[str, Any]]] = []
    target = "global" if rulebook.pairs_in_global else rulebook.ruleset_for(f"pair:{INGREDIENT_KEY}")
    for index, (first, first_drug) in enumerate(known):
        for second, second_drug in known[index + 1 :]:
            if first_drug.id == second_drug.id or fact_local(first) != fact_local(second):
                continue
            theirs = ingredients(second_drug)
            for ingredient in ingredients(first_drug):
                # Sodium chloride in normal saline and in Ringer's: two vehicles, not a duplicate.
                if ingredient in theirs and ingredient not in rulebook.not_duplicated:
                    out.append((target, {
                        "t": "pair", "n": number, "key": INGREDIENT_KEY, "a_item": first["item"],
                        "b_item": second["item"], "a_drug": first_drug.id, "b_drug": second_drug.id,
                        "ing": ingredient, "b_ings": list(theirs), "same": 0,
                    }))
    return out


def _atc_facts(rulebook: Rulebook, number: int, known: list[tuple[dict[str, Any], Drug]]
               ) -> list[tuple[str, dict[str, Any]]]:
    """Two different products of one ATC level-4 group acting in the same place: one fact per
    shared group, durable compares it with the other product's groups."""
    policy = rulebook.settings.atc_duplicates
    if policy is None:
        return []
    out: list[tuple[str, dict[str, Any]]] = []
    target = "global" if rulebook.pairs_in_global else rulebook.ruleset_for(f"pair:{ATC_KEY}")
    regular = [(fact, drug) for fact, drug in known
               if fact.get("freq") not in policy.skip_frequencies and drug.id in rulebook.atc_groups]
    for index, (first, first_drug) in enumerate(regular):
        for second, second_drug in regular[index + 1 :]:
            if first_drug.id == second_drug.id or fact_local(first) != fact_local(second):
                continue
            theirs = rulebook.atc_groups[second_drug.id]
            for group in rulebook.atc_groups[first_drug.id]:
                if group in theirs:
                    out.append((target, {
                        "t": "pair", "n": number, "key": ATC_KEY, "a_item": first["item"], "b_item": second["item"],
                        "a_drug": first_drug.id, "b_drug": second_drug.id, "atc": group, "b_atcs": list(theirs),
                        "same": 0,
                    }))
    return out


def intravenous_as_one(routes: list[str]) -> list[str]:
    """The dictionary's routes, push and drip taken as one: its entries do not tell 静推 from 静滴
    reliably (a monograph does, e.g. potassium chloride never pushed), so a dictionary drug given by
    the other intravenous way is not called wrong — an intramuscular-only drug given IV still is."""
    if "iv" in routes or "ivgtt" in routes:
        return list(dict.fromkeys([*routes, "iv", "ivgtt"]))
    return list(routes)


def fact_local(fact: dict[str, Any]) -> str:
    """Where an item acts: systemically, or the local form group (tablets and eye drops are not a duplicate)."""
    return "systemic" if fact["sys"] else fact.get("form_group", "")


def facts_for(resolved: ResolvedPrescription, rulebook: Rulebook) -> Facts:
    """Every fact one prescription asserts, by the logical ruleset it goes to."""
    number = next(_FACT_NUMBERS)
    common = _common(resolved, number, rulebook)
    batches: dict[str, list[dict[str, Any]]] = defaultdict(list)
    rx_fact = {"t": "rx", **common, "item_count": len(resolved.items),
               "allergies_recorded": int(resolved.allergies_recorded)}
    if resolved.allergies_unread:
        rx_fact["allergy_unread"] = 1
        rx_fact["allergy_unread_text"] = "、".join(resolved.allergies_unread)
    if resolved.mixed_text:
        rx_fact["text_mixed"] = 1
        rx_fact["text_fields"] = "、".join(resolved.mixed_text)
    batches["global"].append(rx_fact)
    # Drug rulesets also read diagnoses and allergies; the global ruleset never does.
    clinical = {**common, "dx": list(resolved.dx_tokens), "allergies": sorted(resolved.allergy_ids)}
    known: list[tuple[dict[str, Any], Drug]] = []
    keys_of = [rulebook.pair_keys[item.drug.id] if item.drug is not None else [] for item in resolved.items]
    for position, item in enumerate(resolved.items):
        fact = _item_fact(item, common.get("weight"), rulebook)
        if item.drug is not None:
            known.append((fact, item.drug))
            if item.drug.monograph:
                # The other items' drugs and classes, for rules that depend on what else is prescribed.
                others = [key for other, keys in enumerate(keys_of) if other != position for key in keys]
                batches[rulebook.ruleset_for(f"drug:{item.drug.id}")].append({**clinical, **fact, "co": others})
            # The class rules (allergy and population by class, 长期处方 exclusions) read the drug's
            # classes, control classes and allergy classes.
            classes = [*item.drug.classes, *item.drug.dictionary_classes,
                       *(f"control:{c}" for c in item.drug.control)]
            class_fact = {**clinical, **fact, "akeys": list(item.drug.allergy_classes), "ckeys": classes}
            routes = item.drug.forms.get(item.form_group or "") if not item.drug.monograph and item.route else None
            if routes:
                class_fact["routes_ok"] = intravenous_as_one(routes)
            batches[CLASS_RULESET].append(class_fact)
        batches["global"].append({**common, **fact})
    for logical, pair in _pair_facts(rulebook, number, known):
        batches[logical].append(pair)
    return Facts(batches=batches, dx_codes=list(resolved.dx_codes), allergy_text=resolved.allergy_text)
