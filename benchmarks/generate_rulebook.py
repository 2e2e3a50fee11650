"""Rulebooks for benchmarks and long-running tests: a stable snapshot, and a large synthetic one.

``stable_snapshot(src, dst)`` copies a rulebook and prunes what does not load (a drug file being
written, an interaction naming a drug not written yet), so a benchmark or a soak test measures
the engine and not the state of a rulebook under edit. With a complete rulebook nothing is
pruned and the snapshot is the rulebook.

``generate_rulebook(src, dst, drugs=2000)`` writes a rulebook of ``drugs`` monographs: the real
ones plus clones of them (the same indications, regimens, forms, contraindications and allergy
classes; new ids, names, ATC codes), every clone also in one of ``groups`` synthetic classes.
Interactions grow with the drugs as in the real rulebook: each real interaction that names a
drug is cloned for each clone of that drug; each synthetic class gets a duplicate-therapy rule
and an interaction with the next class. The result is schema-valid and loads with
``rx_audit.load_rulebook``.

    python benchmarks/generate_rulebook.py --drugs 2000 --out /tmp/rules2000
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from rx_audit.errors import RulebookError, RulebookErrors
from rx_audit.rulebook import LINE_KEY, LINES_KEY, load_rulebook, load_yaml, strip_lines

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("classes", "allergy_classes", "interactions", "duplicates", "custom")


def _dump(path: Path, data: Any) -> None:
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=200), encoding="utf-8")


def _entry_line(entry: Any) -> int:
    return entry.get(LINE_KEY, 0) if isinstance(entry, dict) else 0


def _prune_entry(path: Path, line: int | None) -> bool:
    """Remove the entry (list item or mapping key of a section) that holds ``line``."""
    if line is None:
        return False
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        return False
    best: tuple[int, str, Any] | None = None  # (start line, section, index or key)
    for section in SECTIONS:
        value = raw.get(section)
        if isinstance(value, list):
            for index, entry in enumerate(value):
                start = _entry_line(entry)
                if start <= line and (best is None or start > best[0]):
                    best = (start, section, index)
        elif isinstance(value, dict):
            for key, entry in value.items():
                if key in (LINE_KEY, LINES_KEY):
                    continue
                start = value[LINES_KEY].get(key, _entry_line(entry))
                if start <= line and (best is None or start > best[0]):
                    best = (start, section, key)
    if best is None:
        return False
    _, section, where = best
    del raw[section][where]
    _dump(path, strip_lines(raw))
    return True


def stable_snapshot(source: str | Path, target: str | Path, rounds: int = 30) -> Path:
    """Copy ``source`` to ``target`` and prune broken drug files and dangling entries until it loads."""
    source, target = Path(source), Path(target)
    shutil.copytree(source, target, dirs_exist_ok=False)
    for _ in range(rounds):
        try:
            load_rulebook(target)
            return target
        except RulebookErrors as error:
            errors: list[RulebookError] = error.errors
        except RulebookError as error:
            errors = [error]
        changed = False
        by_file: dict[Path, list[int | None]] = {}
        for error in errors:
            if error.path is None:
                continue
            path = (target.parent / error.path) if not Path(error.path).is_absolute() else Path(error.path)
            by_file.setdefault(path, []).append(error.line)
        for path, lines in by_file.items():
            if not path.exists() or path.name in ("rulebook.yaml",):
                continue
            raw_is_drug = "drugs" in path.relative_to(target).parts
            if raw_is_drug:
                path.unlink()
                changed = True
                continue
            for line in sorted({line for line in lines if line is not None}, reverse=True):
                changed |= _prune_entry(path, line)
        if not changed:
            break
    load_rulebook(target)  # raises with what could not be pruned
    return target


def _clone_drug(raw: dict[str, Any], number: int, group: str) -> dict[str, Any]:
    data = copy.deepcopy(raw)
    data.pop("examples", None)
    drug = data["drug"]
    template = drug["id"]
    tag = f"#{number}"
    drug["id"] = f"{template}_s{number}"
    drug["name"] = f"{drug['name']}{tag}"
    names = drug.get("names") or []
    drug["names"] = [f"{name}{tag}" for name in ([names] if isinstance(names, str) else names)]
    drug["atc"] = [f"X{number:06d}"]
    classes = drug.get("classes") or []
    drug["classes"] = [*([classes] if isinstance(classes, str) else classes), group]
    return data


def generate_rulebook(source: str | Path, target: str | Path, drugs: int = 2000, groups: int = 200) -> Path:
    """Write a schema-valid rulebook of ``drugs`` monographs into ``target`` (created; must not exist)."""
    source, target = Path(source), Path(target)
    shutil.copytree(source, target)
    templates: list[dict[str, Any]] = []
    for path in sorted((target / "drugs").glob("*.yaml")):
        raw = strip_lines(load_yaml(path))
        if isinstance(raw, dict) and isinstance(raw.get("drug"), dict):
            templates.append(raw)
    if not templates:
        raise RulebookError("no drug monograph to clone", source)
    extra = max(0, drugs - len(templates))
    out = target / "drugs" / "synthetic"
    out.mkdir()
    clones_of: dict[str, list[str]] = {t["drug"]["id"]: [] for t in templates}
    for number in range(1, extra + 1):
        template = templates[(number - 1) % len(templates)]
        group = f"syn{(number - 1) % groups:03d}"
        clone = _clone_drug(template, number, group)
        clones_of[template["drug"]["id"]].append(clone["drug"]["id"])
        _dump(out / f"{clone['drug']['id']}.yaml", clone)

    used_groups = sorted({f"syn{(n - 1) % groups:03d}" for n in range(1, extra + 1)})
    classes = {g: {"name": f"合成类别{g}", "source": "synthetic benchmark class"} for g in used_groups}
    _dump(target / "classes_synthetic.yaml", {"classes": classes})

    interactions_path = target / "interactions.yaml"
    real = strip_lines(load_yaml(interactions_path)) if interactions_path.exists() else {}
    cloned: list[dict[str, Any]] = []
    for spec in (real or {}).get("interactions") or []:
        for side, selector in enumerate(spec["between"]):
            for clone_id in clones_of.get(selector.get("drug", ""), []):
                entry = copy.deepcopy(spec)
                entry.pop("examples", None)
                entry["id"] = f"{spec['id']}_{clone_id}_{side}"
                entry["between"][side] = {"drug": clone_id}
                cloned.append(entry)
    for index, group in enumerate(used_groups):
        partner = used_groups[(index + 1) % len(used_groups)]
        if partner != group:
            cloned.append({
                "id": f"synthetic_{group}_{partner}", "between": [{"class": group}, {"class": partner}],
                "severity": "warning", "message": "{a}与{b}合用需监测（合成规则）",
                "source": "synthetic benchmark rule",
            })
    duplicates = [{"id": f"synthetic_{group}", "class": group, "severity": "warning",
                   "message": "同时使用两种{class_name}（{a}、{b}）", "source": "synthetic benchmark rule"}
                  for group in used_groups]
    _dump(target / "interactions_synthetic.yaml", {"interactions": cloned, "duplicates": duplicates})
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drugs", type=int, default=2000)
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--source", type=Path, default=ROOT / "rules")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--snapshot", action="store_true", help="prune what does not load in --source first")
    args = parser.parse_args(argv)
    source = args.source
    if args.snapshot:
        source = stable_snapshot(args.source, args.out.with_name(args.out.name + "-snapshot"))
    generate_rulebook(source, args.out, drugs=args.drugs, groups=args.groups)
    book = load_rulebook(args.out)
    print(f"{args.out}: {len(book.drugs)} drugs, {len(book.rules)} rules, {len(book.rulesets)} rulesets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
