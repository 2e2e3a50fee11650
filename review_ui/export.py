"""Statistics out of the UI: an Excel workbook (openpyxl) with one sheet per table, and CSV that
Excel on a Chinese Windows PC opens without garbling (UTF-8 with a byte-order mark)."""

from __future__ import annotations

import io

import pandas as pd


def sheet_name(name: str) -> str:
    """An Excel sheet name: at most 31 characters, none of ``[]:*?/\\``."""
    for bad in "[]:*?/\\":
        name = name.replace(bad, "-")
    return name[:31]


def workbook(sheets: dict[str, pd.DataFrame]) -> bytes:
    buffer = io.BytesIO()
    with pd.ExcelWriter(buffer, engine="openpyxl") as writer:
        for name, frame in sheets.items():
            frame.to_excel(writer, sheet_name=sheet_name(name), index=False)
    return buffer.getvalue()


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode("utf-8-sig")
