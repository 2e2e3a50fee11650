"""The statistics page (issue 13): opens on the period that holds the data, every rate with its
numerator and denominator, per pharmacist, 干预成功率, one "top N", the rule filter obeyed by the
table too, and the export (Excel with every table, CSV)."""

from __future__ import annotations

import io

import pandas as pd

from tests.review_ui.conftest import all_text
from tests.review_ui.helpers import prescription, result, seed
from tests.review_ui.test_pages import no_exception


def decided_queue(queue) -> None:
    """Six items issued in March 2025 (long before 'today'): two passed, two returned (one of them
    answered by the doctor with a new version)."""
    items = seed(queue, 6)
    for item in items[:4]:
        queue.claim(item.id, "yao01")
    queue.approve(items[0].id, "yao01", "A01", "已核实")
    queue.approve(items[1].id, "yao01", "A01", "已核实")
    queue.return_to_doctor(items[2].id, "yao01", "R06", "请换药")
    queue.return_to_doctor(items[3].id, "yao01", "R06", "请换药")
    changed = prescription(3)
    changed["items"][0]["dose"] = {"value": 250, "unit": "mg"}
    queue.resubmit(changed, result(changed, severity="warning"), doctor_id="D003")


def open_statistics(app):
    at = app("yao01").run()
    at.switch_page("views/statistics.py").run()
    no_exception(at)
    return at


def test_opens_on_the_period_that_holds_the_data(app, queue) -> None:
    """No preset chosen: the data of March 2025 is counted, not an empty 'last 30 days' of today."""
    decided_queue(queue)
    at = open_statistics(app)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["审核处方 audited"] == "7"  # six, and the doctor's second version
    assert "2025-02-25 — 2025-03-26" in all_text(at)


def test_every_headline_rate_says_what_it_is_made_of(app, queue) -> None:
    decided_queue(queue)
    at = open_statistics(app)
    helps = {m.label: m.help for m in at.metric}
    assert helps["审后通过率 passed"].endswith("= 2 / 4")
    assert helps["退回率 returned"].endswith("= 2 / 4")
    assert "= 7 / 7" in helps["拦截率 held"]
    assert "= 1 / 2" in helps["干预成功率 accepted"]  # one of two returns answered with a new version
    assert {m.label: m.value for m in at.metric}["干预成功率 accepted"] == "50.0%"


def test_tables_carry_numerator_and_denominator_and_pharmacists(app, queue) -> None:
    decided_queue(queue)
    at = open_statistics(app)
    frames = [d.value for d in at.dataframe]
    day = next(f for f in frames if "day" in f.columns)
    assert list(day["pass_after_review_rate_of"]) == ["2 / 4"]
    pharmacists = next(f for f in frames if "药师 pharmacist" in f.columns)
    row = pharmacists.iloc[0]
    assert row["药师 pharmacist"] == "yao01" and row["决定 decisions"] == 4 and row["放行/决定 n/d"] == "2 / 4"


def test_rule_table_obeys_the_minimum_decisions_filter(app, queue) -> None:
    decided_queue(queue)
    at = open_statistics(app)
    at.slider(key="st_min_decided").set_value(5).run()
    assert not [d for d in at.dataframe if "规则 rule" in d.value.columns]  # 4 decisions < 5: no row shown
    at.slider(key="st_min_decided").set_value(4).run()
    rules = next(d.value for d in at.dataframe if "规则 rule" in d.value.columns)
    assert list(rules["已决定 decided"]) == [4]


def test_one_top_n_for_every_ranking(app, queue) -> None:
    decided_queue(queue)
    at = open_statistics(app)
    at.number_input(key="st_top").set_value(5).run()
    text = all_text(at)
    assert "前 5 名" in text and "前200名" not in text and "前30" not in text


def test_export_offers_excel_and_csv(app, queue) -> None:
    decided_queue(queue)
    at = open_statistics(app)
    labels = [e.proto.label for e in at.get("download_button")]
    assert labels == ["导出Excel（全部表） Excel, every table", "导出CSV Export CSV"]


def test_excel_workbook_has_one_sheet_per_table_and_csv_opens_in_excel() -> None:
    import openpyxl

    from review_ui import export

    sheets = {
        "概览 summary": pd.DataFrame([{"指标 figure": "拦截率 held", "值 value": 0.5, "分子/分母 n/d": "1 / 2"}]),
        "按药师 by pharmacist: a very long name": pd.DataFrame([{"药师 pharmacist": "yao01", "决定 decisions": 4}]),
    }
    book = openpyxl.load_workbook(io.BytesIO(export.workbook(sheets)))
    assert book.sheetnames == ["概览 summary", "按药师 by pharmacist- a very long "]
    assert book["概览 summary"]["C2"].value == "1 / 2"
    assert export.csv_bytes(sheets["概览 summary"]).startswith("\ufeff指标".encode())


def test_prescribing_indicators_by_facility_and_prescriber(app, queue) -> None:
    """WHO/INRUD and 处方点评 indicators from the stored prescriptions with the drug dictionary:
    2 items each (二甲双胍, 阿托伐他汀: essential, generic names, no antibacterial, no injection);
    one more prescription with a brand name (立普妥) and an injected antibacterial (头孢曲松)."""
    from rx_audit import AuditResult

    seed(queue, 3)
    extra = prescription(9, facility="LZH")
    extra["items"] = [
        {"id": "1", "drug": "注射用头孢曲松钠", "form": "注射用无菌粉末", "route": "ivgtt"},
        {"id": "2", "drug": "立普妥", "form": "片", "route": "po", "dose": {"value": 20, "unit": "mg"}},
        {"id": "3", "drug": "某某未收录神药", "form": "片", "route": "po"},
    ]
    queue.submit(extra, AuditResult(id=extra["id"], flagged=False, rulebook="sha256:t", findings=[]))
    at = open_statistics(app)
    next(b for b in at.button if b.key == "st_indicators").click().run()
    no_exception(at)
    metrics = {m.label: (m.value, m.help) for m in at.metric}
    assert metrics["平均品种数 drugs/rx"][0] == "2.25"  # 9 drugs / 4 prescriptions
    assert metrics["抗菌药物 antibacterial"] == ("25.0%", "抗菌 n/d = 1 / 4")
    assert metrics["注射剂 injection"] == ("25.0%", "注射 n/d = 1 / 4")
    assert metrics["基本药物 essential"][1] == "基药 n/d = 8 / 9"  # the unknown drug is not essential
    assert metrics["通用名 generic name"][1] == "通用名 n/d = 7 / 9"  # 立普妥 (brand) and the unknown one
    facility = next(d.value for d in at.dataframe if "机构 facility" in d.value.columns)
    lzh = facility[facility["机构 facility"] == "LZH"].iloc[0]
    assert lzh["处方数 prescriptions"] == 2 and lzh["词典未收录品种 unknown drugs"] == 1
    assert any("医生 prescriber" in d.value.columns for d in at.dataframe)
