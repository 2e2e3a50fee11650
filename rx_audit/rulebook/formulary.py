"""Facility formularies (目录): which drugs a facility may dispense, and the HIS's own drug codes.

A county's 六统一 list or a township's essential-medicines-plus-additions list, written by
``rx-audit formulary import`` from the HIS drug dictionary as ``rules/formularies/<facility>.yaml``.
A drug outside its facility's formulary is a ``formulary`` finding; an item's HIS ``code`` resolves
through the facility's formulary before its name is read.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from rx_audit.errors import RulebookError
from rx_audit.rulebook.compiler import Compiler
from rx_audit.rulebook.model import Formulary
from rx_audit.rulebook.schema import Spec
from rx_audit.rulebook.yaml_lines import LINE_KEY, LINES_KEY, iter_yaml, load_yaml

FORMULARY_DIR = "formularies"


class FormularyLine(Spec):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")  # the dictionary / monograph id
    code: str | None = None  # the HIS's drug code
    name: str | None = None  # as the HIS writes it
    spec: str | None = None  # 规格
    form: str | None = None  # 剂型
    unit: str | None = None
    maker: str | None = None


class UnmatchedLine(Spec):
    code: str | None = None
    name: str | None = None
    spec: str | None = None
    reason: str


class FormularySpec(Spec):
    facility: str = Field(min_length=1)
    name: str | None = None
    level: str | None = None
    source: str = Field(min_length=2)
    drugs: list[FormularyLine] = Field(default_factory=list)
    unmatched: list[UnmatchedLine] = Field(default_factory=list)


def load_formularies(compiler: Compiler, root: Path, known: set[str]) -> dict[str, Formulary]:
    """Every ``formularies/*.yaml`` under ``root``; an id the rulebook does not know is an error at file:line."""
    directory = root / FORMULARY_DIR
    formularies: dict[str, Formulary] = {}
    if not directory.is_dir():
        return formularies
    for path in iter_yaml(directory):
        try:
            raw = load_yaml(path)
        except RulebookError as error:
            error.path = compiler.rel(path)
            compiler.errors.append(error)
            continue
        if not isinstance(raw, dict) or set(raw) - {"formulary", LINE_KEY, LINES_KEY}:
            compiler.error("a formulary file is a mapping with a `formulary:` section", path, 1)
            continue
        spec = compiler.validate(FormularySpec, raw.get("formulary"), path)
        if spec is None:
            continue
        if spec.facility in formularies:
            compiler.error(f"facility {spec.facility} has two formularies ({formularies[spec.facility].where})",
                           path, spec.line)
            continue
        for line in spec.drugs:
            if line.id not in known:
                compiler.error(f"formulary line {line.code or line.name}: unknown drug id {line.id!r}", path, line.line)
        formularies[spec.facility] = Formulary(
            facility=spec.facility, ids=frozenset(line.id for line in spec.drugs),
            codes={line.code: line.id for line in spec.drugs if line.code}, where=compiler.where(path, spec.line),
        )
    return formularies
