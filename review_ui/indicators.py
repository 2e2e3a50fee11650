"""Prescribing indicators a pharmacy department reports — WHO/INRUD (How to investigate drug use in
health facilities, WHO/DAP/93.1) and 医院处方点评管理规范（试行）(2010) 附件 处方评价表:

* 每张处方平均用药品种数 average number of drugs per prescription (encounter);
* 抗菌药物使用百分率 % of prescriptions with an antibacterial;
* 注射剂使用百分率 % of prescriptions with an injection;
* 基本药物占处方用药的百分率 % of drugs prescribed from the essential medicines list;
* 通用名占处方用药的百分率 % of drugs prescribed by generic name.

Computed from the stored prescriptions with the rulebook's drug dictionary (names resolved by
``Rulebook.drug_for``, as the audit resolves them; antibacterial tier, essential-list flag). What
the dictionary cannot tell is counted apart, never guessed: an item whose drug is not in the
dictionary counts in the drugs per prescription but in neither the essential nor the generic-name
numerator, and the number of such items is shown. "By generic name": the item's written name
contains the drug's Chinese generic name or its INN (a brand in brackets after it is allowed, as
CONTRACT §1 says); a brand alone (格华止, 立普妥, Lipitor) is not. Pure functions: tested without a
page.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

INJECTION_ROUTES = frozenset(
    {"iv", "ivgtt", "im", "sc", "静滴", "静推", "肌注", "皮下", "静脉滴注", "静脉注射", "肌内注射"}
)
_SPACES = re.compile(r"[\s\u3000]+")


def _norm(text: str) -> str:
    return _SPACES.sub("", text).lower()


@dataclass(frozen=True)
class DrugFacts:
    drug_id: str | None
    antibacterial: bool = False
    essential: bool = False
    generic: bool = False


class Dictionary:
    """Written drug names → the dictionary's facts, resolved as the audit resolves them (the
    rulebook's ``drug_for``: HIS decoration read, an ambiguous or unknown name left unknown, never
    a guess); each distinct written name is looked up once (an HIS repeats a few hundred names)."""

    def __init__(self, resolve: Callable[[str], Any]) -> None:
        self._resolve = resolve
        self._seen: dict[str, DrugFacts] = {}

    def facts(self, written: str) -> DrugFacts:
        if written not in self._seen:
            self._seen[written] = self._look_up(written)
        return self._seen[written]

    def _look_up(self, written: str) -> DrugFacts:
        drug = self._resolve(written) if written.strip() else None
        if drug is None:
            return DrugFacts(drug_id=None)
        text = _norm(written)
        generic = _norm(drug.name) in text or _norm(drug.id.replace("_", " ")) in text
        return DrugFacts(
            drug_id=drug.id,
            antibacterial=drug.antibacterial_tier is not None or "antibacterial" in drug.classes,
            essential=drug.essential,
            generic=generic,
        )


def is_injection(item: Mapping[str, Any]) -> bool:
    form = str(item.get("form") or "").lower()
    route = str(item.get("route") or "").lower()
    return "注射" in form or "injection" in form or route in INJECTION_ROUTES


@dataclass
class Tally:
    """The indicators of a group of prescriptions (a facility, a prescriber, all)."""

    prescriptions: int = 0
    drugs: int = 0
    with_antibacterial: int = 0
    with_injection: int = 0
    essential: int = 0
    generic: int = 0
    unknown: int = 0  # items the dictionary does not know

    def add(self, prescription: Mapping[str, Any], dictionary: Dictionary) -> None:
        items = [i for i in prescription.get("items") or [] if isinstance(i, dict)]
        facts = [dictionary.facts(str(i.get("drug") or "")) for i in items]
        self.prescriptions += 1
        self.drugs += len(items)
        self.with_antibacterial += any(f.antibacterial for f in facts)
        self.with_injection += any(is_injection(i) for i in items)
        self.essential += sum(f.essential for f in facts)
        self.generic += sum(f.generic for f in facts)
        self.unknown += sum(f.drug_id is None for f in facts)

    def row(self) -> dict[str, Any]:
        def share(n: int, d: int) -> float | None:
            return round(n / d, 4) if d else None

        return {
            "处方数 prescriptions": self.prescriptions,
            "平均品种数 drugs/rx": round(self.drugs / self.prescriptions, 2) if self.prescriptions else None,
            "抗菌药物% antibacterial": share(self.with_antibacterial, self.prescriptions),
            "抗菌 n/d": f"{self.with_antibacterial} / {self.prescriptions}",
            "注射剂% injection": share(self.with_injection, self.prescriptions),
            "注射 n/d": f"{self.with_injection} / {self.prescriptions}",
            "基本药物% essential": share(self.essential, self.drugs),
            "基药 n/d": f"{self.essential} / {self.drugs}",
            "通用名% generic name": share(self.generic, self.drugs),
            "通用名 n/d": f"{self.generic} / {self.drugs}",
            "词典未收录品种 unknown drugs": self.unknown,
        }


def tally(
    rows: Iterable[tuple[str | None, str | None, Mapping[str, Any]]], dictionary: Dictionary
) -> tuple[Tally, dict[str, Tally], dict[str, Tally]]:
    """All prescriptions, per facility and per prescriber."""
    overall = Tally()
    by_facility: dict[str, Tally] = {}
    by_prescriber: dict[str, Tally] = {}
    for facility, prescriber, payload in rows:
        overall.add(payload, dictionary)
        by_facility.setdefault(facility or "(none)", Tally()).add(payload, dictionary)
        by_prescriber.setdefault(prescriber or "(none)", Tally()).add(payload, dictionary)
    return overall, by_facility, by_prescriber
