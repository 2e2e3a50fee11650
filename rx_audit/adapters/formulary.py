"""A HIS drug dictionary (CSV or Excel) read into a facility formulary, each line matched to the drug
dictionary — `rx-audit formulary import FILE --facility ID`.

Every line is accounted for: matched (its drug id), or unmatched with the reason (the name names
no drug, or names one only ambiguously); none is dropped. The formulary is written as
``rules/formularies/<facility>.yaml`` (the rulebook reads it: codes resolve, drugs outside it are a
``formulary`` finding) with a match report beside it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rx_audit.errors import RxAuditError
from rx_audit.rulebook import Rulebook

# Column headers HIS exports use, by field.
_HEADERS = {
    "code": ("code", "编码", "药品编码", "药品代码", "his编码", "药品id"),
    "name": ("name", "名称", "药品名称", "通用名", "药品通用名", "商品名称"),
    "spec": ("spec", "规格", "药品规格"),
    "form": ("form", "剂型"),
    "unit": ("unit", "单位", "包装单位", "最小单位"),
    "maker": ("maker", "manufacturer", "生产厂家", "厂家", "生产企业"),
}


class FormularyImportError(RxAuditError):
    """The HIS dictionary file cannot be read: not CSV/XLSX, no name column."""


@dataclass
class FormularyMatch:
    facility: str
    source: str
    matched: list[dict[str, Any]] = field(default_factory=list)
    unmatched: list[dict[str, Any]] = field(default_factory=list)

    @property
    def lines(self) -> int:
        return len(self.matched) + len(self.unmatched)


def _columns(header: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for index, title in enumerate(header):
        cleaned = str(title or "").strip().lower()
        for key, aliases in _HEADERS.items():
            if cleaned in aliases and key not in found:
                found[key] = index
    if "name" not in found:
        raise FormularyImportError(f"no drug-name column (one of {', '.join(_HEADERS['name'])}) in the header")
    return found


def read_his_dictionary(path: str | Path) -> list[dict[str, str]]:
    """The lines of a HIS drug dictionary export: CSV (UTF-8 or GBK) or Excel (.xlsx, first sheet)."""
    path = Path(path)
    rows: list[list[Any]]
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        try:
            import openpyxl
        except ImportError as error:  # pragma: no cover - openpyxl is in the ui and test extras
            raise FormularyImportError("reading .xlsx needs openpyxl: pip install 'rx-audit[ui]'") from error
        sheet = openpyxl.load_workbook(path, read_only=True, data_only=True).worksheets[0]
        rows = [list(row) for row in sheet.iter_rows(values_only=True)]
    elif path.suffix.lower() in (".csv", ".txt"):
        raw = path.read_bytes()
        for encoding in ("utf-8-sig", "gb18030"):
            try:
                text = raw.decode(encoding)
                break
            except UnicodeDecodeError:
                continue
        else:
            raise FormularyImportError("the CSV is neither UTF-8 nor GBK")
        rows = list(csv.reader(text.splitlines()))
    else:
        raise FormularyImportError(f"{path.name}: a CSV or .xlsx file is expected")
    if not rows:
        raise FormularyImportError(f"{path.name} is empty")
    columns = _columns([str(cell) if cell is not None else "" for cell in rows[0]])
    lines = []
    for row in rows[1:]:
        line = {key: str(row[index]).strip() if index < len(row) and row[index] is not None else ""
                for key, index in columns.items()}
        if any(line.values()):
            lines.append(line)
    return lines


def match_formulary(lines: list[dict[str, str]], rulebook: Rulebook, facility: str, source: str) -> FormularyMatch:
    """Each line to a drug of the rulebook: by its name with its 规格 and 剂型 the way the HIS shows them."""
    match = FormularyMatch(facility=facility, source=source)
    for line in lines:
        name = line.get("name", "")
        drug = rulebook.drug_for(name) or rulebook.drug_for(f"{name}{line.get('form', '')}")
        if drug is None:
            reason = "名称为空 (no name)" if not name else "名称无法识别或有歧义 (name not resolved, or ambiguous)"
            match.unmatched.append({**{k: v for k, v in line.items() if k in ("code", "name", "spec") and v},
                                    "reason": reason})
            continue
        entry = {"id": drug.id, **{k: v for k, v in line.items() if v}}
        match.matched.append(entry)
    return match


def write_formulary(match: FormularyMatch, rules: str | Path, *, name: str | None = None,
                    level: str | None = None) -> tuple[Path, Path]:
    """``rules/formularies/<facility>.yaml`` and ``…-report.csv`` (every line: matched id or reason)."""
    directory = Path(rules) / "formularies"
    directory.mkdir(parents=True, exist_ok=True)
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in match.facility)
    out = directory / f"{safe}.yaml"
    body = {"formulary": {"facility": match.facility, **({"name": name} if name else {}),
                          **({"level": level} if level else {}), "source": match.source,
                          "drugs": match.matched, "unmatched": match.unmatched}}
    out.write_text("# 机构药品目录 Facility formulary — written by `rx-audit formulary import`; edit the HIS\n"
                   "# export and import again rather than this file.\n"
                   + yaml.safe_dump(body, allow_unicode=True, sort_keys=False, width=120), encoding="utf-8")
    report = directory / f"{safe}-report.csv"
    with report.open("w", encoding="utf-8-sig", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["结果 outcome", "编码 code", "名称 name", "规格 spec", "药品 id", "原因 reason"])
        for entry in match.matched:
            writer.writerow(["matched", entry.get("code", ""), entry.get("name", ""), entry.get("spec", ""),
                             entry["id"], ""])
        for entry in match.unmatched:
            writer.writerow(["unmatched", entry.get("code", ""), entry.get("name", ""), entry.get("spec", ""), "",
                             entry["reason"]])
    return out, report
