"""Findings from fired rules: each explained (rule, file:line, evidence, reference), then the verdict."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from rx_audit.contract import SEVERITY_RANK, AuditResult, Category, Finding, Prescription, Severity
from rx_audit.engine.facts import Facts
from rx_audit.rulebook import CompiledRule, Rulebook


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


def explain(
    prescription: Prescription,
    rulebook: Rulebook,
    facts: Facts,
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

    findings = _without_generic_duplicates(findings)
    for (item, missing), (rule, covered, fact) in twins.items():
        if missing in structural.get(item, set()):
            continue
        finding = _finding(rule, fact, item, rulebook, facts, covers=sorted(covered))
        findings.append(finding)

    findings.extend(_engine_error(rulebook, logical, error) for logical, error in failures)
    return _verdict(prescription, rulebook, findings, unaudited=bool(failures))


def _evidence(rule: CompiledRule, fact: dict[str, Any], facts: Facts, covers: list[str] | None) -> dict[str, Any]:
    """What fired the rule: the fields it read, its limits, and for a twin what is missing."""
    evidence: dict[str, Any] = {}
    for name in rule.evidence_fields:
        if name == "dx":
            evidence["diagnoses"] = facts.dx_codes
        elif name in fact:
            evidence[name] = _display(fact[name])
    evidence.update((k, _display(v)) for k, v in rule.limits.items() if k not in ("value_field", "allergy_keys"))
    if rule.missing_field is not None:
        evidence["missing"] = rule.missing_field
        evidence["rules"] = covers or list(rule.covers)
    return evidence


def _allergies_matched(rule: CompiledRule, fact: dict[str, Any], facts: Facts) -> list[str]:
    """The allergy texts that fired an allergy rule ("$drug": a generic rule's key is the item's own drug)."""
    keys = [fact.get("drug", "") if key == "$drug" else key for key in rule.limits["allergy_keys"]]
    return list(dict.fromkeys(facts.allergy_text.get(key, key) for key in keys if key in fact.get("allergies", [])))


def _without_generic_duplicates(findings: list[Finding]) -> list[Finding]:
    """Only the most specific finding about two items is kept: a class duplicate rule (two
    paracetamol products: liver risk) says more than the generic shared-ingredient rule, and any
    rule about the pair — a duplicate or an interaction (庆大霉素+阿米卡星: additive ototoxicity) —
    says more than the ATC-group rule."""
    def pair(finding: Finding) -> frozenset[str]:
        return frozenset(finding.evidence.get("items", ()))

    # By rule id, not category: an interaction rule may report as a duplicate (compile_pairs).
    specific = {pair(f) for f in findings if f.rule.startswith("duplicate.") and f.rule not in _GENERIC}
    said = {pair(f) for f in findings
            if f.rule.startswith(("duplicate.", "interaction.")) and f.rule != "duplicate.atc"}
    return [f for f in findings
            if not (f.rule == "duplicate.ingredient" and pair(f) in specific)
            and not (f.rule == "duplicate.atc" and pair(f) in said)]


_GENERIC = ("duplicate.atc", "duplicate.ingredient")


def _engine_error(rulebook: Rulebook, where: str, error: str) -> Finding:
    return Finding(
        rule="completeness.engine_error", category=Category.completeness, severity=Severity.warning,
        message=f"规则执行出错（{where}），该部分未完成审核，请药师人工审核：{error}"[:1000],
        source=f"{rulebook.root}", evidence={"ruleset": where, "error": error[:500]},
        reference="rx_audit: 未能完整审核的处方一律拦截，由药师人工审核",
    )


def unaudited(prescription: Prescription, rulebook: Rulebook, error: str) -> AuditResult:
    return _verdict(prescription, rulebook, [_engine_error(rulebook, "audit", error)], unaudited=True)


def _verdict(
    prescription: Prescription, rulebook: Rulebook, findings: list[Finding], *, unaudited: bool
) -> AuditResult:
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
    facts: Facts,
    covers: list[str] | None = None,
) -> Finding:
    evidence = _evidence(rule, fact, facts, covers)
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
        matched = _allergies_matched(rule, fact, facts)
        values["allergy"] = "、".join(matched) or "该药"
        evidence["allergies"] = matched
    if "ingredient" in wanted and fact.get("ing"):
        ingredient = rulebook.drugs.get(fact["ing"])
        values["ingredient"] = ingredient.name if ingredient else fact["ing"]
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
