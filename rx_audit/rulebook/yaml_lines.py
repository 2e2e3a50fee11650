"""Rule files read line-aware: every mapping keeps its file line, so every error and finding points at
the YAML a pharmacist wrote. Safe loading only (libyaml's when present); numbers durable_rules
cannot read, anchors and aliases, and oversized files are refused at file:line.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
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


# --- the parse cache ------------------------------------------------------------------------------
# Parsing YAML is most of a rulebook's load (2.5 of 3.8 s for the shipped one under a profiler:
# 1,492 dictionary entries and 150 monographs), and a service, a replay's workers and every test
# load the same files again. Each file's parse is kept under the sha256 of its bytes (and of this
# format), as JSON — data, never code (no pickle) —, so a changed file is parsed afresh and a
# cache that is missing, unwritable or damaged only costs the parse. RX_AUDIT_CACHE_DIR chooses
# the folder ("off" turns it off); default ~/.cache/rx_audit.
_CACHE_FORMAT = b"rx_audit yaml cache 1\0"
_DATE_TAG = "\0date"


def _cache_dir() -> Path | None:
    setting = os.environ.get("RX_AUDIT_CACHE_DIR")
    if setting is not None:
        return None if setting.strip().lower() in ("", "0", "off", "none", "false") else Path(setting) / "yaml"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rx_audit" / "yaml"


class _Uncacheable(Exception):
    """A value JSON cannot carry back unchanged (a set, bytes, a tuple): the file is not cached."""


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {key: _encode(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_encode(child) for child in value]
    if type(value) is datetime.date:
        return {_DATE_TAG: value.isoformat()}
    raise _Uncacheable(type(value).__name__)


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _DATE_TAG in value:
            return datetime.date.fromisoformat(value[_DATE_TAG])
        return {key: _decode(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_decode(child) for child in value]
    return value


def _cached_parse(data: bytes, parse: Any) -> Any:
    folder = _cache_dir()
    if folder is None:
        return parse()
    entry = folder / (hashlib.sha256(_CACHE_FORMAT + yaml.__version__.encode() + b"\0" + data).hexdigest() + ".json")
    with contextlib.suppress(OSError, ValueError, TypeError):
        cached = entry.read_bytes()
        # Walking the value back costs as much as reading it; only a file with a date needs it.
        return _decode(orjson.loads(cached)) if b'"\\u0000date"' in cached else orjson.loads(cached)
    value = parse()
    with contextlib.suppress(OSError, ValueError, TypeError, _Uncacheable):
        payload = orjson.dumps(_encode(value))
        folder.mkdir(parents=True, exist_ok=True)
        _evict(folder)
        # Written aside and renamed: a reader never sees half a file, whoever writes at the same time.
        handle, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(payload)
            os.replace(temporary, entry)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
    return value


_CACHE_ENTRIES = 4000  # ~2.5 shipped rulebooks' worth; edits and tests' copies would grow it for ever


def _evict(folder: Path) -> None:
    """Past the limit, forget the least recently written half (only when writing: rare)."""
    entries = list(os.scandir(folder))
    if len(entries) < _CACHE_ENTRIES:
        return
    entries.sort(key=lambda entry: entry.stat().st_mtime)
    for entry in entries[: len(entries) // 2]:
        with contextlib.suppress(OSError):
            os.unlink(entry.path)


def load_yaml(path: Path) -> Any:
    """Parse one rule file, every mapping annotated with its line; syntax errors carry file:line."""
    try:
        if path.stat().st_size > MAX_RULE_FILE_BYTES:
            raise RulebookError(f"rule file larger than {MAX_RULE_FILE_BYTES} bytes; split it", path)
        data = path.read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RulebookError(f"cannot read: {error}", path) from error
    try:
        def parse() -> Any:
            _refuse_aliases(text, path)
            return yaml.load(text, Loader=_LineLoader)

        return _cached_parse(data, parse)
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
