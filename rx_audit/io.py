"""Reading batches: JSON Lines or one JSON array, streamed, every record with its line number.

A line that is not JSON becomes a :class:`~rx_audit.models.RecordError` in the stream, so one
bad record never stops the batch. A JSON array is decoded one element at a time, so a large
file is never held in memory whole.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from rx_audit.models import RecordError

_CHUNK = 1 << 16


def iter_records(source: str | Path | IO[str]) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, record)``: a parsed JSON value, or a :class:`RecordError` for a bad one.

    ``source`` is a path, ``"-"`` for standard input, or an open text stream.
    """
    if isinstance(source, (str, Path)):
        if str(source) == "-":
            yield from _iter_stream(sys.stdin)
            return
        with open(source, encoding="utf-8-sig") as stream:
            yield from _iter_stream(stream)
        return
    yield from _iter_stream(source)


def _iter_stream(stream: IO[str]) -> Iterator[tuple[int, Any]]:
    first = ""
    buffered: list[str] = []
    for line in stream:
        buffered.append(line)
        if line.strip():
            first = line.lstrip()[0]
            break
    if first == "[":
        yield from _iter_array("".join(buffered), stream)
        return
    for number, line in enumerate(itertools.chain(buffered, stream), start=1):
        record = _parse_line(line, number)
        if record is not None:
            yield number, record


def _parse_line(line: str, number: int) -> Any:
    text = line.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        return RecordError(line=number, error=f"第{number}行不是合法的JSON (not JSON): {error.msg}")


def _iter_array(head: str, stream: IO[str]) -> Iterator[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    buffer = head
    position = buffer.index("[") + 1
    line = 1 + buffer.count("\n", 0, position)
    exhausted = False
    while True:
        # Skip separators, counting lines, refilling as needed.
        while True:
            while position < len(buffer) and buffer[position] in " \t\r\n,":
                if buffer[position] == "\n":
                    line += 1
                position += 1
            if position < len(buffer) or exhausted:
                break
            chunk = stream.read(_CHUNK)
            buffer, position = buffer[position:] + chunk, 0
            exhausted = not chunk
        if position >= len(buffer):
            yield line, RecordError(line=line, error="JSON数组没有结束 (unterminated JSON array)")
            return
        if buffer[position] == "]":
            return
        while True:
            try:
                value, end = decoder.raw_decode(buffer, position)
                break
            except json.JSONDecodeError as error:
                if exhausted:
                    yield line, RecordError(line=line, error=f"第{line}行不是合法的JSON (not JSON): {error.msg}")
                    return
                chunk = stream.read(_CHUNK)
                buffer, position = buffer[position:] + chunk, 0
                exhausted = not chunk
        yield line, value
        line += buffer.count("\n", position, end)
        position = end
