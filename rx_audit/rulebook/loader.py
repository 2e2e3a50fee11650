"""Loading a rulebook folder: read every file, validate each section, compile, and hand the engine
a :class:`Rulebook` — or every error at once, each with file and line.

The stages: read (:mod:`yaml_lines`), sort the sections of every file into :class:`Sections`,
build the drugs, compile each check family (:mod:`compile_drug`, :mod:`compile_pairs`,
:mod:`compile_global`), check durable's limits, shard, and assemble the :class:`Rulebook`.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rx_audit.errors import RulebookError, RulebookErrors
from rx_audit.rulebook.compile_classes import compile_atc_duplicates, compile_class_rules, compile_population_rules
from rx_audit.rulebook.compile_drug import compile_drug
from rx_audit.rulebook.compile_global import compile_global_rules
from rx_audit.rulebook.compile_pairs import compile_pairs
from rx_audit.rulebook.compiler import Compiler, shard
from rx_audit.rulebook.conditions import branches
from rx_audit.rulebook.dictionary import load_dictionary
from rx_audit.rulebook.formulary import FORMULARY_DIR, load_formularies
from rx_audit.rulebook.gc_pause import paused_gc
from rx_audit.rulebook.limits import MAX_BRANCHES_PER_RULE, MAX_LIST_TESTS_PER_FACT, MAX_RULES_PER_RULESET
from rx_audit.rulebook.model import Drug, Rulebook, RuleExample
from rx_audit.rulebook.names import normalise_name
from rx_audit.rulebook.schema import (
    AllergyClassSpec,
    ClassRule,
    ClassSpec,
    CustomRule,
    DrugFile,
    DuplicateSpec,
    Example,
    InteractionSpec,
    Settings,
)
from rx_audit.rulebook.yaml_lines import LINE_KEY, LINES_KEY, iter_yaml, load_yaml, strip_lines

SETTINGS_FILE = "rulebook.yaml"
DICTIONARY_DIR = "dictionary"  # the drug dictionary has its own loader (rx_audit.rulebook.dictionary)
# Facility formularies, likewise (rx_audit.rulebook.formulary).
_SECTIONS = {"classes", "allergy_classes", "interactions", "duplicates", "custom", "class_rules"}


def rulebook_hash(root: Path) -> str:
    """sha256 over every file's relative path and bytes: the version every result names."""
    digest = hashlib.sha256()
    for path in sorted(iter_yaml(root), key=lambda p: p.relative_to(root).as_posix()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def example_of(spec: Example, source: str, default_id: str) -> RuleExample:
    """A rule-file example as the prescription it stands for."""
    prescription: dict[str, Any] = {
        "id": default_id,
        "visit_type": spec.visit_type,
        "patient": strip_lines(spec.patient),
        "diagnoses": [
            {"code": entry} if isinstance(entry, str) else strip_lines(entry) for entry in spec.diagnoses
        ],
        "items": [strip_lines(item) for item in spec.items],
    }
    if spec.facility is not None:
        prescription["facility"] = strip_lines(spec.facility)
    if spec.department is not None:
        prescription["department"] = spec.department
    return RuleExample(name=spec.name, source=source, prescription=prescription, expect=list(spec.expect))


@dataclass
class Sections:
    """Every validated section of the rulebook's files, by kind, each with the file it came from."""

    settings: Settings = field(default_factory=Settings)
    settings_path: Path = Path(SETTINGS_FILE)
    classes: dict[str, ClassSpec] = field(default_factory=dict)
    allergy_specs: dict[str, AllergyClassSpec] = field(default_factory=dict)
    allergy_path: dict[str, Path] = field(default_factory=dict)
    interactions: list[tuple[Path, InteractionSpec]] = field(default_factory=list)
    duplicates: list[tuple[Path, DuplicateSpec]] = field(default_factory=list)
    custom: list[tuple[Path, CustomRule]] = field(default_factory=list)
    class_rules: list[tuple[Path, ClassRule]] = field(default_factory=list)
    drug_files: list[tuple[Path, Any]] = field(default_factory=list)


def _read_files(compiler: Compiler, root: Path) -> dict[Path, Any]:
    raw_files: dict[Path, Any] = {}
    own_loaders = (root / DICTIONARY_DIR, root / FORMULARY_DIR)
    for path in iter_yaml(root):
        if any(path.is_relative_to(directory) for directory in own_loaders):
            continue
        try:
            raw_files[path] = load_yaml(path)
        except RulebookError as error:
            error.path = compiler.rel(path)
            compiler.errors.append(error)
    return raw_files


def _named_entries(raw: dict[str, Any], key: str) -> Iterator[tuple[str, Any]]:
    for name, entry in (raw.get(key) or {}).items():
        if name not in (LINE_KEY, LINES_KEY):
            yield name, entry


def _sort_sections(compiler: Compiler, root: Path, raw_files: dict[Path, Any]) -> Sections:
    sections = Sections(settings_path=root / SETTINGS_FILE)
    if sections.settings_path in raw_files:
        raw = raw_files[sections.settings_path] or {}
        parsed = compiler.validate(Settings, raw.get("settings", {}) if isinstance(raw, dict) else {},
                                   sections.settings_path)
        if parsed is not None:
            sections.settings = parsed
    for path, raw in raw_files.items():
        if path == sections.settings_path:
            continue
        if not isinstance(raw, dict):
            compiler.error("a rule file is a mapping (drug:, classes:, interactions:, …)", path, 1)
        elif "drug" in raw:
            sections.drug_files.append((path, raw))
        else:
            _sort_file(compiler, sections, path, raw)
    return sections


def _sort_file(compiler: Compiler, sections: Sections, path: Path, raw: dict[str, Any]) -> None:
    for key in {k for k in raw if k not in (LINE_KEY, LINES_KEY)} - _SECTIONS:
        compiler.error(f"unknown section {key!r}; expected one of {sorted(_SECTIONS | {'drug'})}", path,
                       raw[LINES_KEY].get(key))
    for name, entry in _named_entries(raw, "classes"):
        if (spec := compiler.validate(ClassSpec, entry, path)) is not None:
            sections.classes[name] = spec
    for name, entry in _named_entries(raw, "allergy_classes"):
        if (allergy := compiler.validate(AllergyClassSpec, entry, path)) is not None:
            sections.allergy_specs[name] = allergy
            sections.allergy_path[name] = path
    for key, model, target in (("interactions", InteractionSpec, sections.interactions),
                               ("duplicates", DuplicateSpec, sections.duplicates),
                               ("custom", CustomRule, sections.custom),
                               ("class_rules", ClassRule, sections.class_rules)):
        for entry in raw.get(key) or []:
            if (spec := compiler.validate(model, entry, path)) is not None:
                target.append((path, spec))


def _drug_of(compiler: Compiler, sections: Sections, path: Path, spec: DrugFile) -> Drug:
    info = spec.drug
    for class_name in info.classes:
        if class_name not in sections.classes:
            compiler.error(f"unknown class {class_name!r} (define it in classes.yaml)", path, info.line_of("classes"))
    for class_name in info.allergy_classes:
        if class_name not in sections.allergy_specs:
            compiler.error(f"unknown allergy class {class_name!r} (define it in allergy_classes.yaml)", path,
                           info.line_of("allergy_classes"))
    if not spec.review:
        compiler.warnings.append(
            f"{compiler.rel(path)}:{info.line}: no review record (review: by/date/against) — "
            "a second pharmacist has not confirmed this monograph (rules/REVIEW.md)"
        )
    propagating = (name for name in info.allergy_classes
                   if name in sections.allergy_specs and sections.allergy_specs[name].propagate)
    return Drug(
        id=info.id, name=info.name, names=info.names, atc=info.atc, classes=info.classes,
        allergy_classes=info.allergy_classes, unit=info.unit, chronic=info.chronic, forms=info.forms,
        source=info.source, path=compiler.rel(path), line=info.line, allergy_implied=(info.id, *propagating),
    )


def _read_drugs(compiler: Compiler, sections: Sections) -> tuple[dict[str, Drug], dict[str, str],
                                                                  list[tuple[Path, DrugFile, Drug]]]:
    drugs: dict[str, Drug] = {}
    names: dict[str, str] = {}
    drug_specs: list[tuple[Path, DrugFile, Drug]] = []
    for path, raw in sections.drug_files:
        spec = compiler.validate(DrugFile, raw, path)
        if spec is None:
            continue
        info = spec.drug
        if info.id in drugs:
            compiler.error(f"drug {info.id} is defined twice (also in {drugs[info.id].path})", path, info.line)
            continue
        drug = _drug_of(compiler, sections, path, spec)
        drugs[drug.id] = drug
        for alias in [info.id, info.name, *info.names, *info.atc]:
            key = normalise_name(alias)
            if key in names and names[key] != drug.id:
                compiler.error(f"name {alias!r} is used by {names[key]} and {drug.id}", path, info.line_of("names"))
            names[key] = drug.id
        drug_specs.append((path, spec, drug))
    return drugs, names, drug_specs


def _add_dictionary(compiler: Compiler, root: Path, sections: Sections, drugs: dict[str, Drug],
                    names: dict[str, str]) -> None:
    """Every dictionary entry becomes a drug the class rules reach; a monograph keeps its own facts.

    Names: a monograph's names come first; a dictionary name another drug already has stays with
    that drug (reported as a warning), and a name two entries share maps to neither (unknown is
    said, never guessed).
    """
    directory = root / DICTIONARY_DIR
    if not directory.is_dir():
        return
    try:
        dictionary = load_dictionary(directory, classes=set(sections.classes),
                                     allergy_classes=set(sections.allergy_specs))
    except RulebookErrors as error:
        compiler.errors.extend(error.errors)
        return
    for entry in dictionary.entries.values():
        drug = drugs.get(entry.id)
        facts = {"kind": entry.kind, "ingredients": tuple(entry.ingredients) or (entry.id,),
                 "antibacterial_tier": entry.antibacterial_tier, "control": tuple(entry.control),
                 "high_alert": entry.high_alert, "essential": entry.essential}
        if drug is not None:
            for key, value in facts.items():
                setattr(drug, key, value)
            drug.dictionary_classes = tuple(name for name in entry.classes if name not in drug.classes)
            continue
        path, _, line = dictionary.where[entry.id].rpartition(":")
        propagating = (name for name in entry.allergy_classes
                       if name in sections.allergy_specs and sections.allergy_specs[name].propagate)
        drugs[entry.id] = Drug(
            id=entry.id, name=entry.name, names=[*([entry.inn] if entry.inn else []), *entry.salts, *entry.names],
            atc=entry.atc, classes=entry.classes, allergy_classes=entry.allergy_classes, unit="", chronic=entry.chronic,
            forms=entry.forms, source=entry.source, path=path, line=int(line),
            allergy_implied=(entry.id, *propagating), monograph=False, **facts,  # type: ignore[arg-type]
        )
    for name, entry_id in dictionary.names.items():
        owner = names.setdefault(name, entry_id)
        if owner != entry_id and entry_id not in {owner}:
            compiler.warnings.append(f"{dictionary.where[entry_id]}: name {name!r} of {entry_id} is already "
                                     f"{owner}'s; kept for {owner}")


def _check_also_by(compiler: Compiler, drug_specs: list[tuple[Path, DrugFile, Drug]], drugs: dict[str, Drug],
                   sections: Sections) -> None:
    for path, spec, _drug in drug_specs:
        for selector in spec.indication.also_by if spec.indication else []:
            if selector.drug is not None and selector.drug not in drugs:
                compiler.error(f"indication.also_by: unknown drug {selector.drug!r}", path, selector.line)
            if selector.class_ is not None and selector.class_ not in sections.classes:
                compiler.error(f"indication.also_by: unknown class {selector.class_!r}", path, selector.line)


def _check_durable_limits(compiler: Compiler) -> None:
    for rule in compiler.rules.values():
        if rule.missing_field is None and rule.paths > MAX_BRANCHES_PER_RULE:
            path, _, line = rule.source.rpartition(":")
            compiler.errors.append(RulebookError(
                f"rule {rule.id} expands to {branches(rule.condition)} alternatives (at most {MAX_BRANCHES_PER_RULE}:"
                " durable_rules cannot hold more in one ruleset); use fewer values or a class", path, int(line)))


def _place_pair_rules(compiler: Compiler) -> tuple[bool, frozenset[str]]:
    """Pair rules beside the global rules when they fit (one durable call), else keyed rulesets.

    durable_rules raises error 303 when more than 64 list tests ($iany) pass for one fact, so a key
    with many pair rules keeps a ruleset of its own (one fact then meets one key's rules).
    """
    pair_sets = {key: names for key, names in compiler.rulesets.items() if key.startswith("pair:")}
    pair_rule_keys = frozenset(key.removeprefix("pair:") for key in pair_sets)
    in_global = sum(map(len, pair_sets.values())) + len(compiler.rulesets["global"]) <= MAX_RULES_PER_RULESET and all(
        len(names) <= MAX_LIST_TESTS_PER_FACT for names in pair_sets.values()
    )
    if in_global:
        for key in pair_sets:
            compiler.rulesets["global"].extend(compiler.rulesets.pop(key))
    return in_global, pair_rule_keys


def _dispatched(condition: dict[str, Any], field_name: str) -> bool:
    """Whether a rule's condition tests ``field_name`` for equality at its top level.

    durable_rules keeps the children of an equality test in a hash table (``NEXT_BUCKET_LENGTH``
    in rete.c), so a fact meets only the rules under its own drug or key: rules that all begin
    with that test can share a ruleset without a fact paying for the others'.
    """
    parts = condition.get("$and", [condition]) if isinstance(condition, dict) else []
    return any(isinstance(part, dict) and isinstance(part.get(field_name), str) for part in parts)


def _pack(compiler: Compiler, prefix: str, field_name: str) -> dict[str, str]:
    """Pack the logical rulesets ``prefix…`` into shared ones below durable's path limit.

    Measured on the generated 2,000-drug rulebook (76,153 rules): 2,400 rulesets registered in
    8.5 s, the same rules packed into 586 in 2.1 s, and every call into durable_rules costs the
    same whatever the ruleset's size — so an audit with several drugs makes one call where it
    made one per drug. Returns logical name -> packed name (a ruleset that cannot be packed, or
    is too large, keeps its own name and is sharded on its own).
    """
    packed_name = prefix.rstrip(":") + "s:"
    mapping: dict[str, str] = {}
    groups: list[list[str]] = []
    paths = MAX_RULES_PER_RULESET
    for name in sorted(name for name in compiler.rulesets if name.startswith(prefix)):
        rule_names = compiler.rulesets[name]
        cost = sum(compiler.rules[rule].paths for rule in rule_names)
        if cost > MAX_RULES_PER_RULESET or not all(
            _dispatched(compiler.rules[rule].condition, field_name) for rule in rule_names
        ):
            continue
        if paths + cost > MAX_RULES_PER_RULESET:
            groups.append([])
            paths = 0
        groups[-1].append(name)
        paths += cost
    for index, names in enumerate(groups):
        target = f"{packed_name}{index}"
        compiler.rulesets[target] = [rule for name in names for rule in compiler.rulesets.pop(name)]
        mapping.update((name, target) for name in names)
    return mapping


def load_rulebook(root: str | Path) -> Rulebook:
    """Load, validate and compile every rule file under ``root``; raise every error at once."""
    with paused_gc():
        return _load_rulebook(Path(root))


def _load_rulebook(root: Path) -> Rulebook:
    if not root.is_dir():
        raise RulebookError("rulebook folder not found", root)
    compiler = Compiler(root)
    sections = _sort_sections(compiler, root, _read_files(compiler, root))
    drugs, names, drug_specs = _read_drugs(compiler, sections)
    _add_dictionary(compiler, root, sections, drugs, names)
    formularies = load_formularies(compiler, root, set(drugs))

    _check_also_by(compiler, drug_specs, drugs, sections)
    vehicles = sections.settings.vehicles
    if vehicles is not None:
        where = compiler.where(sections.settings_path, vehicles.line_of("drugs"))
        # An exemption naming a drug this rulebook does not have changes nothing: said, not refused.
        compiler.warnings.extend(f"{where}: settings.vehicles: unknown drug {unknown!r} (ignored)"
                                 for unknown in vehicles.drugs if unknown not in drugs)
    examples: list[RuleExample] = []
    for path, spec, drug in drug_specs:
        compile_drug(compiler, spec, path, drug, sections.allergy_specs, sections.allergy_path)
        examples.extend(example_of(example, compiler.where(path, example.line), f"{drug.id}-example-{number}")
                        for number, example in enumerate(spec.examples, start=1))
    partners = compile_pairs(compiler, sections.interactions, sections.duplicates, drugs, sections.classes)
    compile_global_rules(compiler, sections.settings, sections.settings_path, sections.custom)
    compile_class_rules(compiler, sections.allergy_specs, sections.allergy_path,
                        compiler.where(sections.settings_path, sections.settings.line or 1))
    compile_population_rules(compiler, sections.class_rules, set(sections.classes))
    compile_atc_duplicates(compiler, sections.settings.atc_duplicates,
                           compiler.where(sections.settings_path, sections.settings.line_of("atc_duplicates")))
    for kind, entries in (("interaction", sections.interactions), ("duplicate", sections.duplicates),
                          ("custom", sections.custom), ("class", sections.class_rules)):
        for path, entry in entries:
            examples.extend(example_of(example, compiler.where(path, example.line), f"{kind}-{entry.id}-{number}")
                            for number, example in enumerate(entry.examples, start=1))

    _check_durable_limits(compiler)
    if compiler.errors:
        raise RulebookErrors(compiler.errors)

    allergy_names: dict[str, set[str]] = defaultdict(set)
    for class_id, allergy in sections.allergy_specs.items():
        for alias in [class_id, allergy.name, *allergy.names]:
            allergy_names[normalise_name(alias)].add(class_id)
    pairs_in_global, pair_rule_keys = _place_pair_rules(compiler)
    packed = {**_pack(compiler, "drug:", "drug"), **_pack(compiler, "pair:", "key")}
    return Rulebook(
        root=root,
        hash=rulebook_hash(root),
        settings=sections.settings,
        drugs=drugs,
        rules=compiler.rules,
        rulesets=shard(compiler.rulesets, compiler.rules),
        names=names,
        allergy_names={key: sorted(value) for key, value in allergy_names.items()},
        class_names={name: spec.name for name, spec in sections.classes.items()},
        examples=examples,
        warnings=compiler.warnings,
        pairs_in_global=pairs_in_global,
        pair_rule_keys=pair_rule_keys,
        pair_partners={key: frozenset(value) for key, value in partners.items()},
        formularies=formularies,
        packed=packed,
    )
