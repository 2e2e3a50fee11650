"""Rule files read line-aware: every mapping keeps its file line, so every error and finding points at
the YAML a pharmacist wrote. Safe loading only (libyaml's when present); numbers durable_rules
cannot read, anchors and aliases, and oversized files are refused at file:line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from rx_audit.errors import RulebookError

LINE_KEY = "__line__"
LINES_KEY = "__lines__"


class _LineLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe loading (libyaml's when present) that records the line of every mapping and key."""


def _construct_mapping_with_lines(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    loader.flatten_mapping(node)
    mapping: dict[str, Any] = {}
    key_lines: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) or key is None:
            raise yaml.MarkedYAMLError(problem=f"unsupported mapping key {key!r}", problem_mark=key_node.start_mark)
        key = str(key)
        if key in mapping:
            raise yaml.MarkedYAMLError(problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
        key_lines[str(key)] = key_node.start_mark.line + 1
    mapping[LINE_KEY] = node.start_mark.line + 1
    mapping[LINES_KEY] = key_lines
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_with_lines)

# Numbers durable_rules reads as written: finite, below 1e15 (its integers overflow beyond), and
# no fraction so small that JSON writes it in exponent notation (1e-05), which durable misreads.
_LARGEST_NUMBER = 1e15
_SMALLEST_FRACTION = 1e-4


def _checked_number(loader: _LineLoader, node: yaml.ScalarNode) -> float | int:
    value: float | int
    if node.tag.endswith(":int"):
        value = yaml.SafeLoader.construct_yaml_int(loader, node)
    else:
        value = yaml.SafeLoader.construct_yaml_float(loader, node)
    if isinstance(value, float) and not math.isfinite(value):
        raise yaml.MarkedYAMLError(problem=f"number {node.value!r} is not finite", problem_mark=node.start_mark)
    if abs(value) >= _LARGEST_NUMBER:
        raise yaml.MarkedYAMLError(problem=f"number {node.value!r} is too large (limit 1e15)",
                                   problem_mark=node.start_mark)
    if isinstance(value, float) and value != 0 and abs(value) < _SMALLEST_FRACTION:
        raise yaml.MarkedYAMLError(problem=f"number {node.value!r} is too small (at least 0.0001; use a smaller unit)",
                                   problem_mark=node.start_mark)
    return value


_LineLoader.add_constructor("tag:yaml.org,2002:int", _checked_number)
_LineLoader.add_constructor("tag:yaml.org,2002:float", _checked_number)

MAX_RULE_FILE_BYTES = 2_000_000


def _refuse_aliases(text: str, path: Path) -> None:
    """Anchors and aliases are refused: a few nested aliases expand to gigabytes (an alias bomb)."""
    if "&" not in text and "*" not in text:
        return
    for event in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise RulebookError("YAML anchors and aliases (& and *) are not allowed in rule files; write the values "
                                "out", path, event.start_mark.line + 1 if event.start_mark else None)


def load_yaml(path: Path) -> Any:
    """Parse one rule file, every mapping annotated with its line; syntax errors carry file:line."""
    try:
        if path.stat().st_size > MAX_RULE_FILE_BYTES:
            raise RulebookError(f"rule file larger than {MAX_RULE_FILE_BYTES} bytes; split it", path)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RulebookError(f"cannot read: {error}", path) from error
    try:
        _refuse_aliases(text, path)
        return yaml.load(text, Loader=_LineLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else None
        raise RulebookError(f"YAML syntax: {error.problem or error}", path, line) from error
    except yaml.YAMLError as error:
        raise RulebookError(f"YAML syntax: {error}", path) from error


def strip_lines(value: Any) -> Any:
    """The parsed data without the line annotations (for examples and hashing-free comparisons)."""
    if isinstance(value, dict):
        return {k: strip_lines(v) for k, v in value.items() if k not in (LINE_KEY, LINES_KEY)}
    if isinstance(value, list):
        return [strip_lines(v) for v in value]
    return value


def line_of(raw: Any, loc: Iterable[Any]) -> int | None:
    """Deepest line known along a pydantic error location."""
    line = raw.get(LINE_KEY) if isinstance(raw, dict) else None
    node = raw
    for part in loc:
        if isinstance(node, dict):
            key_line = node.get(LINES_KEY, {}).get(str(part))
            if key_line:
                line = key_line
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            break
        if isinstance(node, dict) and node.get(LINE_KEY):
            line = node[LINE_KEY]
    return line


def iter_yaml(directory: Path) -> Iterator[Path]:
    """Every rule file under ``directory``, in a stable order."""
    yield from sorted(p for p in directory.rglob("*.yaml") if p.is_file())
    yield from sorted(p for p in directory.rglob("*.yml") if p.is_file())
