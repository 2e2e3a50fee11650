"""A facility's formulary from its HIS drug dictionary: every line matched or said why not; codes
resolve through it; a drug outside it is a `formulary` finding (CONTRACT §2)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from rx_audit import Auditor, RulebookError, load_rulebook
from rx_audit.adapters.formulary import match_formulary, read_his_dictionary, write_formulary
from tests.conftest import RULES

LINES = [
    ("code", "药品名称", "规格", "剂型", "单位", "生产厂家"),
    ("X0001", "盐酸二甲双胍片(格华止)", "0.5g*20片", "片剂", "盒", "中美上海施贵宝"),
    ("X0002", "阿莫西林胶囊", "0.25g*24粒", "胶囊", "盒", "珠海联邦"),
    ("X0003", "某某未收录神药", "1g", "片剂", "盒", "某厂"),
]


@pytest.fixture(scope="module")
def rules_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rules") / "rules"
    shutil.copytree(RULES, root)
    return root


def _rx(facility: str, *items: dict) -> dict:
    return {"id": "F-1", "facility": {"id": facility}, "patient": {"age_years": 50, "sex": "M", "egfr": 90,
                                                                    "allergies": []},
            "diagnoses": ["E11.900", "J03.900", "M54.500"],
            "items": [{"form": "片", "frequency": "tid", "route": "po", "days": 5, **item} for item in items]}


def test_csv_in_gbk_is_matched_line_by_line_and_nothing_dropped(rules_copy, tmp_path):
    """A GBK CSV export: two lines matched to their drugs, the unknown one listed with its reason."""
    export = tmp_path / "his.csv"
    with export.open("w", encoding="gb18030", newline="") as stream:
        csv.writer(stream).writerows(LINES)
    lines = read_his_dictionary(export)
    match = match_formulary(lines, load_rulebook(rules_copy), "LZH", "HIS药品字典 his.csv")
    assert [entry["id"] for entry in match.matched] == ["metformin", "amoxicillin"]
    assert [entry["code"] for entry in match.unmatched] == ["X0003"] and match.unmatched[0]["reason"]
    assert match.lines == 3
    out, report = write_formulary(match, rules_copy, name="凉州户镇分院", level="township")
    assert out.name == "LZH.yaml" and "X0003" in report.read_text(encoding="utf-8-sig")


def test_codes_resolve_and_drugs_outside_the_formulary_are_said(rules_copy):
    """After import: code X0001 is metformin whatever the name says; 布洛芬 is outside LZH's list."""
    auditor = Auditor.from_path(rules_copy)
    result = auditor.audit(_rx("LZH", {"code": "X0001", "drug": "HIS自定义名称", "dose": {"value": 500, "unit": "mg"}},
                               {"drug": "阿莫西林胶囊", "form": "胶囊", "dose": {"value": 0.5, "unit": "g"}},
                               {"drug": "布洛芬片", "dose": {"value": 200, "unit": "mg"}}))
    rules = {(f.rule, f.item) for f in result.findings}
    assert ("completeness.unknown_drug", "1") not in rules  # resolved by its code
    assert ("formulary.outside", "3") in rules
    assert not {item for rule, item in rules if rule == "formulary.outside"} & {"1", "2"}
    other = auditor.audit(_rx("OTHER", {"drug": "布洛芬片", "dose": {"value": 200, "unit": "mg"}}))
    assert "formulary.outside" not in {f.rule for f in other.findings}  # no formulary there: nothing to say


def test_excel_export_is_read(tmp_path, rules_copy):
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    for row in LINES:
        book.active.append(row)
    book.save(tmp_path / "his.xlsx")
    lines = read_his_dictionary(tmp_path / "his.xlsx")
    assert [line["code"] for line in lines] == ["X0001", "X0002", "X0003"] and lines[0]["spec"] == "0.5g*20片"


def test_a_formulary_naming_an_unknown_drug_fails_check_at_its_line(tmp_path):
    root = tmp_path / "rules"
    shutil.copytree(RULES, root)
    (root / "formularies").mkdir(exist_ok=True)
    (root / "formularies" / "bad.yaml").write_text(
        "formulary:\n  facility: BAD\n  source: test source\n  drugs:\n    - {id: no_such_drug, code: Z1}\n",
        encoding="utf-8")
    with pytest.raises(RulebookError) as caught:
        load_rulebook(root)
    assert "formularies/bad.yaml:5" in str(caught.value)


def test_cli_imports_and_reports_every_line(rules_copy, tmp_path):
    """`rx-audit formulary import`: one summary line with the counts; a missing file is one clear line."""
    import subprocess
    import sys

    export = tmp_path / "his2.csv"
    with export.open("w", encoding="utf-8", newline="") as stream:
        csv.writer(stream).writerows(LINES)
    cli = [sys.executable, "-m", "rx_audit.cli", "formulary", "import"]
    done = subprocess.run([*cli, str(export), "--facility", "HXZ", "--rules", str(rules_copy)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "3 行 lines: 2 matched, 1 unmatched" in done.stdout and (rules_copy / "formularies" / "HXZ.yaml").exists()
    missing = subprocess.run([*cli, str(tmp_path / "nope.csv"), "--facility", "HXZ", "--rules", str(rules_copy)],
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
