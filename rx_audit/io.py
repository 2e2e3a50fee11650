"""Reading batches: JSON Lines or one JSON array, streamed, every record with its line number.

A record that cannot be read — not JSON, invalid UTF-8, nested too deeply, a number of thousands
of digits, larger than a record may be — becomes a :class:`~rx_audit.contract.RecordError` in the
stream, so one bad record never stops the batch. Files are read as bytes and decoded a record at
a time: one invalid byte spoils its own record, not the file. A JSON array is decoded one
element at a time, so a large file is never held in memory whole, and a broken element is
skipped to the next one.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from rx_audit.contract import RecordError, loads_record
from rx_audit.text import MAX_RECORD_BYTES

_CHUNK = 1 << 16


def iter_records(source: str | Path | IO[str] | IO[bytes]) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, record)``: a parsed JSON value, or a :class:`RecordError` for a bad one.

    ``source`` is a path, ``"-"`` for standard input, or an open stream (text or binary).
    """
    if isinstance(source, (str, Path)):
        if str(source) == "-":
            yield from _iter_bytes(sys.stdin.buffer)
            return
        with open(source, "rb") as stream:
            yield from _iter_bytes(stream)
        return
    if isinstance(source, io.TextIOBase) or (not hasattr(source, "mode") and _is_text(source)):
        yield from _iter_bytes(_Encoded(source))  # type: ignore[arg-type]
        return
    yield from _iter_bytes(source)  # type: ignore[arg-type]


def _is_text(stream: Any) -> bool:
    try:
        return isinstance(stream.read(0), str)
    except Exception:
        return False


class _Encoded:
    """A text stream read as UTF-8 bytes (tests and callers that hand us an open text file)."""

    def __init__(self, stream: IO[str]):
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            yield line.encode("utf-8", "surrogatepass")

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size).encode("utf-8", "surrogatepass")


def _iter_bytes(stream: IO[bytes]) -> Iterator[tuple[int, Any]]:
    first = b""
    buffered: list[bytes] = []
    for raw in stream:
        buffered.append(raw)
        stripped = raw.lstrip(b" \t\r\n\xef\xbb\xbf")
        if stripped:
            first = stripped[:1]
            break
    if first == b"[":
        yield from _iter_array(b"".join(buffered), stream)
        return
    number = 0
    for chunk in (buffered, stream):
        for raw in chunk:
            number += 1
            record = _parse_line(raw, number)
            if record is not None:
                yield number, record


def _parse_line(raw: bytes, number: int) -> Any:
    if number == 1:
        raw = raw.removeprefix(b"\xef\xbb\xbf")  # a BOM from Windows tools
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return RecordError(line=number, error=f"第{number}行不是合法的UTF-8 (invalid UTF-8 at byte {error.start})")
    try:
        return loads_record(text.strip())
    except ValueError as error:
        return RecordError(line=number, error=f"第{number}行{error}")


def _element_end(buffer: bytes, start: int) -> int | None:
    """Index just past the JSON value starting at ``start`` (brackets and strings balanced), or None."""
    depth = 0
    in_string = False
    escaped = False
    position = start
    while position < len(buffer):
        byte = buffer[position]
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
        elif byte in (0x5D, 0x7D):
            if depth == 0:
                return position  # the array's own closing bracket: a bare scalar ended
            depth -= 1
            if depth == 0:
                return position + 1
        elif byte == 0x2C and depth == 0:
            return position
        position += 1
    return None


class _ArrayReader:
    """A JSON array read element by element from a byte stream, with its line count."""

    def __init__(self, head: bytes, stream: IO[bytes]):
        self.stream = stream
        self.buffer = head
        self.position = head.index(b"[") + 1
        self.line = 1 + head.count(b"\n", 0, self.position)
        self.exhausted = False

    def refill(self) -> bool:
        chunk = self.stream.read(_CHUNK)
        self.buffer, self.position = self.buffer[self.position :] + chunk, 0
        self.exhausted = not chunk
        return bool(chunk)

    def skip_separators(self) -> None:
        """Past spaces and commas, counting lines, refilling as needed."""
        while True:
            while self.position < len(self.buffer) and self.buffer[self.position] in b" \t\r\n,":
                if self.buffer[self.position] == 0x0A:
                    self.line += 1
                self.position += 1
            if self.position < len(self.buffer) or self.exhausted or not self.refill():
                return

    def next_end(self) -> int | None:
        """The end of the element at the position, reading more as needed, up to a record's size."""
        end = _element_end(self.buffer, self.position)
        while end is None and not self.exhausted and len(self.buffer) - self.position <= MAX_RECORD_BYTES:
            self.refill()
            end = _element_end(self.buffer, self.position)
        return end


def _iter_array(head: bytes, stream: IO[bytes]) -> Iterator[tuple[int, Any]]:
    reader = _ArrayReader(head, stream)
    while True:
        reader.skip_separators()
        line = reader.line
        if reader.position >= len(reader.buffer):
            yield line, RecordError(line=line, error="JSON数组没有结束 (unterminated JSON array)")
            return
        if reader.buffer[reader.position] == 0x5D:
            return
        end = reader.next_end()
        if end is None:
            too_large = len(reader.buffer) - reader.position > MAX_RECORD_BYTES
            problem = f"记录过大 (record larger than {MAX_RECORD_BYTES} bytes)" if too_large \
                else "JSON没有结束 (unterminated JSON value)"
            yield line, RecordError(line=line, error=f"第{line}行{problem}")
            return
        raw = reader.buffer[reader.position : end]
        record = _parse_line(raw, line)
        if record is not None:
            if isinstance(record, RecordError):
                record.line = line
            yield line, record
        reader.line += raw.count(b"\n")
        reader.position = end
