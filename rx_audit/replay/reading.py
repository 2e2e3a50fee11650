"""Reading a batch: JSON Lines streamed line by line (stored as received, byte for byte) or a JSON
array decoded element by element; memory stays flat whatever the file size."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rx_audit.contract import RecordError

DEFAULT_CHUNK = 500  # records a chunk: audited and committed in one transaction


def _is_array(path: Path) -> bool:
    with open(path, "rb") as stream:
        while True:
            block = stream.read(4096)
            if not block:
                return False
            stripped = block.lstrip(b"\xef\xbb\xbf \t\r\n")
            if stripped:
                return stripped[:1] == b"["


def iter_raw(path: str | Path) -> Iterator[tuple[int, Any, int]]:
    """``(line, record, bytes_read)``: a JSON Lines line as text (parsed later, in the worker), or
    for a JSON array the decoded element (or a RecordError)."""
    path = Path(path)
    if _is_array(path):
        from rx_audit.io import iter_records

        with open(path, "rb") as binary:
            text = io.TextIOWrapper(binary, encoding="utf-8-sig")
            for line, record in iter_records(text):
                yield line, record, binary.tell()
        return
    with open(path, "rb") as binary:
        position = 0
        for number, raw in enumerate(binary, start=1):
            position += len(raw)
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                yield number, raw.decode("utf-8"), position
            except UnicodeDecodeError as error:
                yield (
                    number,
                    RecordError(line=number, error=f"第{number}行不是UTF-8 (not UTF-8): {error.reason}"),
                    position,
                )


def chunks(path: str | Path, size: int) -> Iterator[tuple[list[tuple[int, Any]], int]]:
    chunk: list[tuple[int, Any]] = []
    position = 0
    for line, record, position in iter_raw(path):
        chunk.append((line, record))
        if len(chunk) >= size:
            yield chunk, position
            chunk = []
    if chunk:
        yield chunk, position
