"""Read-only views of a compiled rulebook for people: the rulebook page, the admin page, the CLI.

The compiled form (:class:`CompiledRule`, durable conditions, twins) is the engine's business;
these are what a pharmacist browses: each rule with its drug's Chinese name, where it is
written, why, and each drug with its names and classes — searchable by Chinese or English name,
synonym, ATC code or rule id.
"""

from __future__ import annotations

from dataclasses import dataclass

from rx_audit.rulebook.model import Rulebook
from rx_audit.rulebook.names import normalise_name


@dataclass(frozen=True)
class RuleInfo:
    id: str
    category: str
    severity: str
    message: str  # the template, with {drug} filled in with the drug's Chinese name
    source: str  # file:line
    reference: str
    drug_id: str | None
    drug_name: str | None


@dataclass(frozen=True)
class DrugInfo:
    id: str
    name: str
    names: tuple[str, ...]
    atc: tuple[str, ...]
    classes: tuple[str, ...]
    forms: dict[str, list[str]]
    chronic: bool
    monograph: bool
    kind: str
    antibacterial_tier: str | None
    control: tuple[str, ...]
    high_alert: bool
    essential: bool
    source: str
    where: str  # file:line

    def matches(self, query: str) -> bool:
        """Chinese or English name, synonym, ATC code (prefix) or id, written as a pharmacist would."""
        wanted = normalise_name(query)
        if not wanted:
            return True
        texts = (self.id, self.name, *self.names)
        return any(wanted in normalise_name(text) for text in texts) or any(
            code.upper().startswith(query.strip().upper()) for code in self.atc)


def drug_infos(rulebook: Rulebook) -> list[DrugInfo]:
    return [
        DrugInfo(id=drug.id, name=drug.name, names=tuple(drug.names), atc=tuple(drug.atc),
                 classes=tuple(drug.classes), forms=dict(drug.forms), chronic=drug.chronic, monograph=drug.monograph,
                 kind=drug.kind, antibacterial_tier=drug.antibacterial_tier, control=tuple(drug.control),
                 high_alert=drug.high_alert, essential=drug.essential, source=drug.source,
                 where=f"{drug.path}:{drug.line}")
        for drug in sorted(rulebook.drugs.values(), key=lambda d: d.id)
    ]


def rule_infos(rulebook: Rulebook) -> list[RuleInfo]:
    """Every rule (missing-data twins left out), its message with the drug's name."""
    infos = []
    for rule in sorted(rulebook.rules_by_id().values(), key=lambda r: r.id):
        if rule.missing_field is not None:
            continue
        drug = rulebook.drugs.get(rule.drug or "")
        message = rule.message.replace("{drug}", drug.name) if drug else rule.message
        infos.append(RuleInfo(id=rule.id, category=rule.category, severity=rule.severity, message=message,
                              source=rule.source, reference=rule.reference, drug_id=drug.id if drug else None,
                              drug_name=drug.name if drug else None))
    return infos


def rules_of(rulebook: Rulebook, query: str) -> list[RuleInfo]:
    """The rules of every drug the query names (by any name, synonym or ATC), and rules whose id has it."""
    drugs = {info.id for info in drug_infos(rulebook) if info.matches(query)}
    needle = query.strip().lower()
    return [info for info in rule_infos(rulebook)
            if info.drug_id in drugs or (needle and needle in info.id.lower())]
