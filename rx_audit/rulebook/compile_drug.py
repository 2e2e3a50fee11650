"""A drug monograph compiled: indication, dose regimens, forms and routes, contraindications,
allergy and cross-reactivity, days of supply — one function per check family.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rx_audit.contract import SEVERITY_RANK
from rx_audit.rulebook.compiler import ITEM_PLACEHOLDERS, Compiler, icd_errors
from rx_audit.rulebook.conditions import Gate, all_of, cmp, eq, gate_of, indicated_keys, list_has, list_lacks, none_of
from rx_audit.rulebook.model import CompiledRule, Drug
from rx_audit.rulebook.schema import AllergyClassSpec, DrugFile, Limit, SeverityName


def compile_drug(
    compiler: Compiler,
    spec: DrugFile,
    path: Path,
    drug: Drug,
    allergy_specs: dict[str, AllergyClassSpec],
    allergy_path: dict[str, Path],
) -> None:
    """Every rule of one monograph, in the drug's own ruleset."""
    for family in (_indication, _regimens, _forms_and_routes, _contraindications, _allergy, _duration):
        family(compiler, spec, path, drug)
    cross_reactivity_rules(compiler, drug, allergy_specs, allergy_path)


def _scope(compiler: Compiler, path: Path, drug: Drug) -> tuple[str, dict[str, Any], Callable[[int], str]]:
    """The drug's ruleset, the test every one of its rules starts with, and file:line of its YAML."""
    return f"drug:{drug.id}", eq("drug", drug.id), lambda line: compiler.where(path, line)


def _indication(compiler: Compiler, spec: DrugFile, path: Path, drug: Drug) -> None:
    """Indication (适应证): fires when no diagnosis is under any listed code, exclusions removed first."""
    ruleset, base, src = _scope(compiler, path, drug)
    if spec.indication is not None:
        indication = spec.indication
        bad = icd_errors(indication.codes + indication.exclude)
        if bad:
            compiler.error(f"indication: not ICD-10 codes: {bad}", path, indication.line_of("codes"))
        compiler.check_message(indication.message, ITEM_PLACEHOLDERS, path, indication.line)
        codes = indicated_keys(indication.codes, indication.exclude)
        # dx holds every prefix of every diagnosis code, so "no diagnosis is indicated" is an
        # allItems test; exclusions were folded into the code list at compile time.
        not_indicated = list_lacks("dx", codes)
        # Another item of the prescription that indicates it (a PPI beside an antiplatelet).
        not_co_prescribed = [list_lacks("co", [selector.key for selector in indication.also_by])] \
            if indication.also_by else []
        rule = CompiledRule(
            id=f"{drug.id}.indication",
            category="indication",
            severity=indication.severity,
            message=indication.message,
            source=src(indication.line),
            condition=all_of(base, cmp("$gt", "dx_count", 0), not_indicated, *not_co_prescribed),
            evidence_fields=("dx",),
            limits={"codes": indication.codes, "exclude": indication.exclude},
            reference=indication.source,
            drug=drug.id,
        )
        compiler.add(ruleset, rule)


def _regimens(compiler: Compiler, spec: DrugFile, path: Path, drug: Drug) -> None:
    """Dose regimens (用法用量): per dose, per day, per kg, frequency; each with its missing-data twins."""
    ruleset, base, src = _scope(compiler, path, drug)
    seen_regimens: set[str] = set()
    for regimen in spec.dose:
        if regimen.id in seen_regimens:
            compiler.error(f"duplicate regimen id {regimen.id}", path, regimen.line)
        seen_regimens.add(regimen.id)
        gate = gate_of(regimen.when)
        gate.tests = {"drug": [base], **gate.tests}
        label = regimen.id
        if regimen.message:
            compiler.check_message(regimen.message, ITEM_PLACEHOLDERS, path, regimen.line)
        checks = (
            ("per_dose", "dose", "单次剂量"),
            ("per_day", "daily", "日剂量"),
            ("per_dose_per_kg", "dose_per_kg", "单次剂量(按体重)"),
            ("per_day_per_kg", "daily_per_kg", "日剂量(按体重)"),
        )
        for key, fact_field, label_zh in checks:
            limit: Limit | None = getattr(regimen, key)
            if limit is None:
                continue
            unit = drug.unit + ("/kg" if key.endswith("per_kg") else "")
            needs = {"dose": ["dose"], "daily": ["daily"], "dose_per_kg": ["dose", "weight"],
                     "daily_per_kg": ["daily", "weight"]}[fact_field]
            for bound, op, word in (("max", "$gt", "超过"), ("min", "$lt", "低于")):
                value = getattr(limit, bound)
                if value is None:
                    continue
                suffix = "" if bound == "max" else ".below_min"
                rule = CompiledRule(
                    id=f"{drug.id}.dose.{regimen.id}.{key}{suffix}",
                    category="dose",
                    severity=regimen.severity,
                    message=regimen.message
                    or f"{{drug}}{label_zh} {{value}}{unit} {word}{'上限' if bound == 'max' else '下限'} "
                    f"{{limit}}{unit}（{label}）",
                    source=src(regimen.line_of(key)),
                    condition={},
                    evidence_fields=(fact_field, *(name for name in gate.fields() if name != "drug")),
                    limits={"limit": value, "unit": unit, "regimen": label, "value_field": fact_field},
                    reference=regimen.source,
                    drug=drug.id,
                )
                # Every needed field is listed so each gets its missing-data twin; only the
                # first carries the comparison (dose_per_kg exists only when weight does).
                tests: dict[str, list[dict[str, Any]]] = {need: [] for need in needs}
                tests[needs[0]] = [cmp(op, fact_field, value)]
                compiler.add_with_twins(ruleset, rule, gate, tests)
        if regimen.frequencies:
            capped: SeverityName = "warning" if SEVERITY_RANK[regimen.severity] > SEVERITY_RANK["warning"] \
                else regimen.severity
            frequency_severity = regimen.frequency_severity or capped
            rule = CompiledRule(
                id=f"{drug.id}.dose.{regimen.id}.frequency",
                category="dose",
                severity=frequency_severity,
                message=regimen.message
                or f"{{drug}}用药频次 {{freq}} 不适宜（{label}可用：{'/'.join(regimen.frequencies)}）",
                source=src(regimen.line_of("frequencies")),
                condition={},
                evidence_fields=("freq", *(name for name in gate.fields() if name != "drug")),
                limits={"allowed": regimen.frequencies, "regimen": label},
                reference=regimen.source,
                drug=drug.id,
            )
            compiler.add_with_twins(ruleset, rule, gate, {"freq": [none_of("freq", regimen.frequencies)]})


def _forms_and_routes(compiler: Compiler, spec: DrugFile, path: Path, drug: Drug) -> None:
    """Forms and routes (剂型与给药途径)."""
    ruleset, base, src = _scope(compiler, path, drug)
    info_line = spec.drug.line_of("forms")
    groups = list(drug.forms)
    compiler.add_with_twins(
        ruleset,
        CompiledRule(
            id=f"{drug.id}.route.form",
            category="route",
            severity="warning",
            message=f"{{drug}}无此剂型：{{form}}（可用剂型：{'、'.join(groups)}）",
            source=src(info_line),
            condition={},
            evidence_fields=("form_group", "form"),
            limits={"allowed": groups},
            reference=drug.source,
            drug=drug.id,
        ),
        Gate({"drug": [base]}),
        {"form_group": [none_of("form_group", groups)]},
    )
    for group, routes in drug.forms.items():
        compiler.add_with_twins(
            ruleset,
            CompiledRule(
                id=f"{drug.id}.route.{group}",
                category="route",
                severity="warning",
                message=f"{{drug}}（{group}）给药途径 {{route}} 不适宜（可用：{'/'.join(routes)}）",
                source=src(info_line),
                condition={},
                evidence_fields=("route", "form_group"),
                limits={"allowed": routes},
                reference=drug.source,
                drug=drug.id,
            ),
            Gate({"drug": [base], "form_group": [eq("form_group", group)]}),
            {"route": [none_of("route", routes)]},
        )


def _contraindications(compiler: Compiler, spec: DrugFile, path: Path, drug: Drug) -> None:
    """Contraindications (禁忌): every condition under `when` holds."""
    ruleset, base, src = _scope(compiler, path, drug)
    seen_contra: set[str] = set()
    for contra in spec.contraindications:
        if contra.id in seen_contra:
            compiler.error(f"duplicate contraindication id {contra.id}", path, contra.line)
        seen_contra.add(contra.id)
        compiler.check_message(contra.message, ITEM_PLACEHOLDERS, path, contra.line)
        if contra.when.diagnoses:
            bad = icd_errors(contra.when.diagnoses)
            if bad:
                compiler.error(f"contraindication {contra.id}: not ICD-10 codes: {bad}", path, contra.when.line)
        gate = gate_of(contra.when)
        gate.tests = {"drug": [base], **gate.tests}
        if contra.when.pregnant or contra.when.lactating:
            gate.add("sex", eq("sex", "F"))
        limits: dict[str, Any] = {}
        for bound in ("age_min", "age_max", "egfr_min", "egfr_max", "weight_min", "weight_max", "daily_min",
                      "daily_max", "days_min", "days_max"):
            if getattr(contra.when, bound) is not None:
                limits["limit"] = getattr(contra.when, bound)
        if contra.when.diagnoses:
            limits["codes"] = contra.when.diagnoses
        rule = CompiledRule(
            id=f"{drug.id}.contra.{contra.id}",
            category="contraindication",
            severity=contra.severity,
            message=contra.message,
            source=src(contra.line),
            condition={},
            evidence_fields=tuple(name for name in gate.fields() if name != "drug"),
            limits=limits,
            reference=contra.source,
            drug=drug.id,
        )
        compiler.add_with_twins(ruleset, rule, gate, {})


def _allergy(compiler: Compiler, spec: DrugFile, path: Path, drug: Drug) -> None:
    """Allergy: the drug itself and its allergy classes (cross-reactivity is compiled apart)."""
    ruleset, base, src = _scope(compiler, path, drug)
    allergy_keys = [drug.id, *drug.allergy_classes]
    compiler.add(
        ruleset,
        CompiledRule(
            id=f"{drug.id}.allergy",
            category="contraindication",
            severity="critical",
            message="患者对{allergy}过敏：{drug}禁用",
            source=src(spec.drug.line_of("allergy_classes") if "allergy_classes" in spec.drug.key_lines
                       else spec.drug.line),
            condition=all_of(base, list_has("allergies", allergy_keys)),
            evidence_fields=("allergies",),
            limits={"allergy_keys": allergy_keys},
            reference=drug.source,
            drug=drug.id,
        ),
    )


def _duration(compiler: Compiler, spec: DrugFile, path: Path, drug: Drug) -> None:
    """The drug's own days-of-supply limit."""
    ruleset, base, src = _scope(compiler, path, drug)
    if spec.max_days is not None:
        compiler.add_with_twins(
            ruleset,
            CompiledRule(
                id=f"{drug.id}.duration",
                category="duration",
                severity="warning",
                message="{drug}处方天数 {days} 天超过本药限制 {limit} 天",
                source=src(spec.line_of("max_days")),
                condition={},
                evidence_fields=("days", "visit"),
                limits={"limit": spec.max_days},
                reference=spec.max_days_source or drug.source,
                drug=drug.id,
            ),
            Gate({"drug": [base]}),
            {"days": [cmp("$gt", "days", spec.max_days)]},
        )


def cross_reactivity_rules(
    compiler: Compiler, drug: Drug, allergy_specs: dict[str, AllergyClassSpec], path_for: dict[str, Path]
) -> None:
    for allergy_class in drug.allergy_classes:
        spec = allergy_specs.get(allergy_class)
        if spec is None:
            continue
        for other, severity in spec.cross_reactive.items():
            if other in drug.allergy_classes:
                continue
            compiler.add(
                f"drug:{drug.id}",
                CompiledRule(
                    id=f"{drug.id}.allergy.cross.{other}",
                    category="contraindication",
                    severity=severity,
                    message=f"患者对{{allergy}}过敏，与{spec.name}可能交叉过敏：慎用{{drug}}",
                    source=compiler.where(path_for[allergy_class], spec.line_of("cross_reactive")),
                    condition=all_of(eq("drug", drug.id), list_has("allergies", [other])),
                    evidence_fields=("allergies",),
                    limits={"allergy_keys": [other]},
                    reference=spec.source,
                    drug=drug.id,
                ),
            )


