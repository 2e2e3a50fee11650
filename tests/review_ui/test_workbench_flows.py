"""AppTest of the workbench flows of issue 13: safe decisions, 审方时限 and the lease, give back and
skip, the detail in pharmacist language, the version chain with the doctor's changes and the
patient's earlier prescriptions."""

from __future__ import annotations

from datetime import datetime

from rx_audit import AuditResult, Finding
from tests.review_ui.conftest import all_text
from tests.review_ui.helpers import CHINA, prescription, result, seed
from tests.review_ui.test_pages import button, choose_pass, no_exception


def claimed(app, queue, count: int = 2, **kwargs):
    seed(queue, count, **kwargs)
    at = app("yao01").run()
    button(at, "领取下一张").click().run()
    no_exception(at)
    return at, at.session_state["wb_item"]


def test_critical_item_makes_return_the_primary_action(app, queue) -> None:
    """Passing a 拦截 finding is never the primary button; returning it is."""
    at, _ = claimed(app, queue)
    pass_button = button(at, "通过 Pass")
    return_button = button(at, "退回 Return")
    assert pass_button.proto.type == "secondary"
    assert return_button.proto.type == "primary"


def test_warning_item_makes_pass_the_primary_action(app, queue) -> None:
    record = prescription(1)
    queue.submit(record, result(record, severity="warning"))
    at = app("yao01").run()
    button(at, "领取下一张").click().run()
    assert button(at, "通过 Pass").proto.type == "primary"


def test_after_a_decision_the_next_item_opens_from_the_top(app, queue) -> None:
    """The decision asks the page to scroll up once (an iframe script at the top of the page), and
    the success message comes before the queue and the new prescription's header."""
    at, first = claimed(app, queue)
    choose_pass(at)
    button(at, "通过 Pass").click().run()
    no_exception(at)
    assert at.session_state["wb_item"] not in (None, first)
    main = list(at.main)
    kinds = [getattr(node, "type", None) for node in main]
    assert "iframe" in kinds[:3], kinds[:6]  # the scroll script, first on the page
    texts = all_text(at)
    assert texts.index("已打开下一张") < texts.index("待审 pending") < texts.index("处方 RX-")
    at.run()  # the next run does not scroll again
    assert "wb_scroll_top" not in at.session_state


def test_countdown_and_lease_are_shown_for_the_open_item(app, queue) -> None:
    at, item_id = claimed(app, queue)
    text = all_text(at)
    assert "审方时限 review limit 3分0秒" in text  # the default limit, 180 s
    assert "截止" in text and "领取租约至 lease until" in text
    item = queue.get(item_id).item
    assert item.lease_expires_at is not None


def test_facility_review_time_limit_comes_from_the_config(app, queue, tmp_path, monkeypatch) -> None:
    config = tmp_path / "rx.toml"
    config.write_text(
        "[review_ui]\nreview_time_limit_seconds = 240\n[review_ui.review_time_limits]\nDSZ = 600\n", encoding="utf-8"
    )
    monkeypatch.setenv("RX_AUDIT_CONFIG", str(config))
    seed(queue, 1, facility="DSZ")
    at = app("yao01").run()
    button(at, "领取下一张").click().run()
    assert "审方时限 review limit 10分0秒" in all_text(at)


def test_give_back_puts_the_item_back_and_logs_it(app, queue) -> None:
    at, item_id = claimed(app, queue)
    button(at, "交回 Give back").click().run()
    no_exception(at)
    assert at.session_state["wb_item"] is None
    item = queue.get(item_id)
    assert item.item.status == "pending" and item.item.claimed_by is None
    assert [t.action for t in item.trail][-1] == "give_back"
    assert any("已交回" in i.value for i in at.info)


def test_skip_opens_the_next_and_does_not_offer_the_skipped_again(app, queue) -> None:
    at, first = claimed(app, queue, count=2)
    button(at, "跳过 Skip").click().run()
    no_exception(at)
    second = at.session_state["wb_item"]
    assert second not in (None, first)
    assert [t.action for t in queue.get(first).trail][-1] == "skip"
    choose_pass(at)
    button(at, "通过 Pass").click().run()
    no_exception(at)
    assert at.session_state["wb_item"] is None  # the skipped one is not offered again in this session
    assert queue.get(first).item.status == "pending"


def test_decision_buttons_have_keyboard_shortcuts(app, queue) -> None:
    at, _ = claimed(app, queue)
    shortcuts = {b.label: b.proto.shortcut.lower() for b in at.button}
    assert shortcuts["通过 Pass"] == "alt+p" and shortcuts["退回 Return"] == "alt+t"
    assert shortcuts["交回 Give back"] == "alt+g" and shortcuts["跳过 Skip"] == "alt+s"


def interaction_result(record: dict) -> AuditResult:
    findings = [
        Finding(rule="interaction.warfarin_ssri", category="interaction", severity="warning", item="2",
                message="舍曲林与华法林合用出血风险增加", source="rules/interactions.yaml:132",
                evidence={"between": ["华法林", "选择性5-羟色胺再摄取抑制剂"], "items": ["1", "2"],
                          "drugs": ["warfarin", "sertraline"]}),
        Finding(rule="digoxin.dose.elderly.per_day", category="dose", severity="warning", item="1",
                message="地高辛日剂量 0.375mg 超过上限 0.25mg（elderly）", source="rules/drugs/digoxin.yaml:48",
                evidence={"daily": 0.375, "age": 78, "limit": 0.25, "unit": "mg", "regimen": "elderly",
                          "value": 0.375}),
        Finding(rule="clopidogrel.indication", category="indication", severity="warning", item="1",
                message="诊断中无氯吡格雷的适应证", source="rules/drugs/clopidogrel.yaml:19",
                evidence={"diagnoses": ["E11.900"], "codes": ["I20", "I21", "I22", "I23", "I24", "I25", "I63"],
                          "form_group": "oral_solid"}),
    ]  # fmt: skip
    return AuditResult(id=record["id"], flagged=True, severity="warning", rulebook="sha256:t", findings=findings)


def test_detail_reads_in_pharmacist_language(app, queue) -> None:
    record = prescription(1)
    record["patient"]["hepatic_impairment"] = "none"
    queue.submit(record, interaction_result(record))
    at = app("yao01").run()
    button(at, "领取下一张").click().run()
    no_exception(at)
    text = all_text(at)
    assert "华法林 × 选择性5-羟色胺再摄取抑制剂" in text
    assert "日剂量 0.375 mg，上限 0.25 mg" in text and "适用人群 老年" in text
    assert "（老年）" in text and "（elderly）" not in text
    assert "诊断 E11.900 2型糖尿病" in text  # the diagnosis name, not a Python list
    assert "I20、I21" in text and "['I20'" not in text
    assert "剂型类别 口服固体制剂" in text and "oral_solid" not in text
    assert "正常（无损害）" in text  # 肝功能, not "none"
    # Both lines of the interaction carry it on the items table.
    items = next(d.value for d in at.dataframe if "药品 drug" in d.value.columns)
    assert all("出血风险" in cell for cell in items["问题 findings"])
    assert "None" not in items.to_string()


def test_version_chain_shows_what_the_doctor_changed(app, queue) -> None:
    record = prescription(1)
    item = queue.submit(record, result(record))
    queue.claim(item.id, "yao01")
    queue.return_to_doctor(item.id, "yao01", "R06", "请核实肾功能后改药")
    v2 = prescription(1)
    v2["items"][0]["dose"] = {"value": 250, "unit": "mg"}
    v2["items"][1]["frequency"] = "qd"
    queue.resubmit(v2, result(v2, severity="warning"), doctor_id="D001")
    at = app("yao01").run()
    button(at, "领取下一张").click().run()
    no_exception(at)
    text = all_text(at)
    assert "医生的修改 what the doctor changed" in text
    assert "二甲双胍 · 单次剂量" in text and "500 mg" in text and "250 mg" in text
    assert "每晚1次" in text and "每日1次" in text
    assert "药师 → 医生" in text and "请核实肾功能后改药" in text  # the message to the doctor


def test_patient_history_is_a_click_away_flagged_or_not(app, queue) -> None:
    earlier = prescription(50, when=datetime(2025, 3, 1, 9, 0, tzinfo=CHINA))
    earlier["id"] = "RX-OLD-CLEAN"
    earlier["patient"]["id"] = "P-00001"
    queue.submit(earlier, AuditResult(id="RX-OLD-CLEAN", flagged=False, rulebook="sha256:t", findings=[]))
    at, item_id = claimed(app, queue, count=1)
    assert "RX-OLD-CLEAN" not in all_text(at)  # not read until asked for
    at.toggle(key=f"hist_{item_id}").set_value(True).run()
    no_exception(at)
    table = [d.value for d in at.dataframe if "处方 prescription" in d.value.columns][-1]
    assert list(table["处方 prescription"]) == ["RX-OLD-CLEAN"]
    assert list(table["审核结果 result"]) == ["未拦截 not flagged"]


def test_times_are_in_the_facility_zone_everywhere(app, queue) -> None:
    """The issue time is 10:16 in Beijing (02:16 UTC) in the header and in search alike."""
    at, _ = claimed(app, queue, count=1)
    assert "开具 2025-03-26 10:16" in all_text(at)
    at.switch_page("views/search.py").run()
    at.text_input(key="s_rx").input("RX-000001")
    button(at, "检索 Search").click().run()
    no_exception(at)
    assert list(at.dataframe[0].value["开具 issued"]) == ["2025-03-26 10:16"]


def select_row(at, key: str, row: int) -> None:
    """A row selected in a dataframe (AppTest takes the selection through session state)."""
    at.session_state[key] = {"selection": {"rows": [row], "columns": [], "cells": []}}


def test_any_row_of_the_queue_opens_claimed(app, queue) -> None:
    seed(queue, 3)
    at = app("yao01").run()
    second_in_line = queue.list_items(status=["pending", "double_signed", "escalated"], limit=3)[1]
    select_row(at, "wb_queue_table_0", 1)
    at.run()
    no_exception(at)
    assert at.session_state["wb_item"] == second_in_line.id
    item = queue.get(second_in_line.id).item
    assert item.status == "claimed" and item.claimed_by == "yao01"
    assert f"处方 {second_in_line.prescription_id}" in all_text(at)


def test_a_corrected_resubmission_not_flagged_links_to_its_returned_version(app, queue) -> None:
    """Search: the doctor's corrected version (not flagged, no review item) opens with the note that
    version 1 was returned, the version chain and what the doctor changed."""
    record = prescription(1)
    item = queue.submit(record, result(record))
    queue.claim(item.id, "yao02")
    queue.return_to_doctor(item.id, "yao02", "R06", "请停用二甲双胍")
    fixed = prescription(1)
    fixed["items"][0]["drug"] = "格列喹酮"
    clean = AuditResult(id=fixed["id"], flagged=False, rulebook="sha256:t")
    assert queue.resubmit(fixed, clean, doctor_id="D1") is None
    at = app("yao01").run()
    at.switch_page("views/search.py").run()
    at.text_input(key="s_rx").input("RX-000001")
    button(at, "检索 Search").click().run()
    hits = at.dataframe[0].value
    assert list(hits["版本 v"]) == [2, 1]
    select_row(at, "s_table", 0)
    at.run()
    no_exception(at)
    text = all_text(at)
    assert "第1版曾被药师退回" in text
    assert "医生的修改 what the doctor changed" in text and "格列喹酮" in text
    assert "该处方未被拦截，不在审方队列中" not in text


def test_a_row_taken_meanwhile_says_so_under_the_table(app, queue) -> None:
    seed(queue, 2)
    at = app("yao01").run()
    first = queue.list_items(status=["pending", "double_signed", "escalated"], limit=1)[0]
    queue.claim(first.id, "yao02")  # another pharmacist, a moment before the click
    select_row(at, "wb_queue_table_0", 0)
    at.run()
    no_exception(at)
    assert "wb_item" not in at.session_state or at.session_state["wb_item"] is None  # nothing else opened
    assert any("无法打开" in e.value for e in at.error)
    assert queue.get(first.id).item.claimed_by == "yao02"
