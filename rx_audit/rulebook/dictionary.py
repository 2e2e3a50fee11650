"""The drug dictionary: every drug a county hospital dispenses, as YAML under ``rules/dictionary/``.

A monograph (``rules/drugs/<id>.yaml``) says how a drug is dosed; a dictionary entry says what a
drug *is*: its generic name, ingredients, ATC codes, the names HIS write for it, its forms and
strengths, its pharmacological and mechanism classes, and what regulation says of it
(antibacterial tier, 麻醉/精神/毒性/放射性/易制毒 control, 高警示, 国家基本药物). Class rules
(allergy, duplicates, interactions, populations, privileges, formulary) reach every entry; a
drug without a monograph is still audited by them.

``rx-audit rules dictionary rules`` validates the files (every error with
file:line) and prints counts.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from rx_audit.errors import RulebookError, RulebookErrors
from rx_audit.rulebook.compiler import Compiler
from rx_audit.rulebook.names import normalise_name
from rx_audit.rulebook.schema import Spec, known_forms
from rx_audit.rulebook.yaml_lines import LINE_KEY, LINES_KEY, iter_yaml, load_yaml

Kind = Literal["chemical", "biological", "tcm", "fluid", "supply"]
Control = Literal["narcotic", "psychotropic_1", "psychotropic_2", "toxic", "radioactive", "precursor"]
Tier = Literal["unrestricted", "restricted", "special"]


class DictionaryEntry(Spec):
    """One drug (or 中成药, infusion fluid, or a non-drug supply an order may carry)."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str = Field(min_length=1)  # 通用名 (Chinese generic name)
    inn: str | None = None  # English INN; None for 中成药
    kind: Kind = "chemical"
    ingredients: list[str] = Field(default_factory=list)  # combination products: every ingredient's id
    atc: list[str] = Field(default_factory=list)
    salts: list[str] = Field(default_factory=list)  # salt forms as written: 盐酸二甲双胍, metformin hydrochloride
    names: list[str] = Field(default_factory=list)  # brands, US names, old names, abbreviations HIS write
    forms: dict[str, list[str]] = Field(default_factory=dict)  # form group -> routes
    strengths: list[str] = Field(default_factory=list)  # "500mg", "0.25g", "125mg/5mL"
    classes: list[str] = Field(default_factory=list)  # ids from rules/classes.yaml
    allergy_classes: list[str] = Field(default_factory=list)  # ids from rules/allergy_classes.yaml
    antibacterial_tier: Tier | None = None  # 非限制/限制/特殊使用级 (national reference)
    control: list[Control] = Field(default_factory=list)
    high_alert: bool = False  # 高警示药品 (中国药学会 2019)
    essential: bool = False  # 国家基本药物目录(2018年版)
    chronic: bool = False  # a long-term drug for a stable chronic disease
    source: str = Field(min_length=2)

    @field_validator("atc", "names", "salts", "classes", "allergy_classes", "ingredients", "strengths",
                     "control", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("forms")
    @classmethod
    def _known_forms(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return known_forms(value)

    @field_validator("atc")
    @classmethod
    def _atc_shape(cls, value: list[str]) -> list[str]:
        for code in value:
            if not (1 <= len(code) <= 7 and code[0].isalpha() and code.isalnum() and code.upper() == code):
                raise ValueError(f"not an ATC code: {code!r}")
        return value


@dataclass
class Dictionary:
    entries: dict[str, DictionaryEntry]
    names: dict[str, str]  # normalised name -> entry id
    ambiguous: dict[str, list[str]]  # normalised name written for several entries -> their ids
    where: dict[str, str]  # entry id -> file:line


def _read_entries(compiler: Compiler, path: Path, classes: set[str] | None,
                  allergy_classes: set[str] | None) -> list[DictionaryEntry]:
    try:
        raw = load_yaml(path)
    except RulebookError as error:
        error.path = compiler.rel(path)
        compiler.errors.append(error)
        return []
    if not isinstance(raw, dict) or "dictionary" not in raw:
        compiler.error("a dictionary file is a mapping with a `dictionary:` list", path, 1)
        return []
    for key in set(raw) - {"dictionary", LINE_KEY, LINES_KEY}:
        compiler.error(f"unknown section {key!r}", path, raw[LINES_KEY].get(key))
    entries = [entry for item in raw.get("dictionary") or []
               if (entry := compiler.validate(DictionaryEntry, item, path)) is not None]
    for entry in entries:
        for name in entry.classes:
            if classes is not None and name not in classes:
                compiler.error(f"unknown class {name!r} (rules/classes.yaml)", path, entry.line_of("classes"))
        for name in entry.allergy_classes:
            if allergy_classes is not None and name not in allergy_classes:
                compiler.error(f"unknown allergy class {name!r} (rules/allergy_classes.yaml)", path,
                               entry.line_of("allergy_classes"))
    return entries


def load_dictionary(root: str | Path, *, classes: set[str] | None = None,
                    allergy_classes: set[str] | None = None) -> Dictionary:
    """Load and validate every file under ``root``; raise every error at once (file:line)."""
    root = Path(root)
    compiler = Compiler(root)
    entries: dict[str, DictionaryEntry] = {}
    where: dict[str, str] = {}
    owners: dict[str, set[str]] = {}
    for path in iter_yaml(root):
        for entry in _read_entries(compiler, path, classes, allergy_classes):
            if entry.id in entries:
                compiler.error(f"entry {entry.id} is defined twice (also at {where[entry.id]})", path, entry.line)
                continue
            entries[entry.id] = entry
            where[entry.id] = compiler.where(path, entry.line)
            # ATC codes too: an HIS may send one (`atc`); a code two entries share resolves to neither.
            for alias in {entry.id, entry.name, *([entry.inn] if entry.inn else []), *entry.salts, *entry.names,
                          *entry.atc}:
                owners.setdefault(normalise_name(alias), set()).add(entry.id)
    for entry_id, entry in entries.items():
        for ingredient in entry.ingredients:
            if ingredient not in entries:
                path_text, _, line = where[entry_id].rpartition(":")
                compiler.errors.append(RulebookError(f"{entry_id}: ingredient {ingredient!r} has no entry",
                                                     path_text, int(line)))
    if compiler.errors:
        raise RulebookErrors(compiler.errors)
    names = {name: next(iter(ids)) for name, ids in owners.items() if len(ids) == 1}
    ambiguous = {name: sorted(ids) for name, ids in owners.items() if len(ids) > 1}
    return Dictionary(entries=entries, names=names, ambiguous=ambiguous, where=where)


def _main(argv: list[str]) -> int:
    import yaml

    root = Path(argv[0] if argv else "rules/dictionary")
    rules = root.parent
    classes = set((yaml.safe_load((rules / "classes.yaml").read_text("utf-8")) or {}).get("classes", {}))
    allergy = set((yaml.safe_load((rules / "allergy_classes.yaml").read_text("utf-8")) or {})
                  .get("allergy_classes", {}))
    try:
        dictionary = load_dictionary(root, classes=classes, allergy_classes=allergy)
    except RulebookError as error:
        print(error, file=sys.stderr)
        return 1
    kinds = Counter(entry.kind for entry in dictionary.entries.values())
    essential = sum(entry.essential for entry in dictionary.entries.values())
    print(f"OK {len(dictionary.entries)} entries ({dict(kinds)}), {essential} essential-list, "
          f"{len(dictionary.names)} names, {len(dictionary.ambiguous)} ambiguous names")
    for name, ids in sorted(dictionary.ambiguous.items()):
        print(f"  ambiguous: {name!r} -> {', '.join(ids)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
