"""The rulebook page and the wording of the detail (issue 13): messages with the drug's Chinese name
and no raw template, search by any name / ATC / rule id finding every rule of the drug; evidence
in pharmacist language; no emoji anywhere in the UI."""

from __future__ import annotations

import re
from pathlib import Path

from review_ui import wording
from tests.review_ui.test_pages import button, no_exception

NAMES = {"warfarin": "华法林", "sertraline": "舍曲林", "levofloxacin": "左氧氟沙星"}


def rules_shown(at):
    return next(d.value for d in at.dataframe if "规则 rule" in d.value.columns)


def test_rulebook_search_by_chinese_name_finds_every_rule_of_the_drug(app, queue) -> None:
    at = app("yao01").run()
    at.switch_page("views/rulebook.py").run()
    no_exception(at)
    for query in ("二甲双胍", "metformin", "A10BA02", "格华止"):
        at.text_input(key="rb_text").input(query).run()
        no_exception(at)
        shown = set(rules_shown(at)["规则 rule"])
        assert "metformin.contra.egfr_lt_30" in shown, query
        assert {r for r in shown if r.startswith("metformin.")} >= {"metformin.indication", "metformin.allergy"}
    at.text_input(key="rb_text").input("metformin.contra.egfr").run()
    assert list(rules_shown(at)["规则 rule"]) == ["metformin.contra.egfr_lt_30"]


def test_rulebook_messages_have_no_raw_templates(app, queue) -> None:
    at = app("yao01").run()
    at.switch_page("views/rulebook.py").run()
    at.text_input(key="rb_text").input("二甲双胍").run()
    table = rules_shown(at)
    messages = list(table["提示 message"])
    assert not [m for m in messages if re.search(r"\{[a-z_]+\}", m)], messages[:5]
    egfr = table[table["规则 rule"] == "metformin.contra.egfr_lt_30"]["提示 message"].iloc[0]
    assert egfr == "eGFR 〈eGFR值〉 < 30：二甲双胍禁用"
    assert "二甲双胍" in set(table["药品 drug"])  # and rules of other drugs whose message names it


def test_trial_audit_evidence_is_in_words(app, queue) -> None:
    at = app("yao01").run()
    at.switch_page("views/rulebook.py").run()
    button(at, "试审 Audit").click().run()
    no_exception(at)
    text = "\n".join(e.value for e in [*at.error, *at.warning, *at.info])
    assert "依据数据 evidence" in text and "evidence: egfr =" not in text


def test_evidence_of_an_interaction_names_both_drugs() -> None:
    evidence = {
        "between": ["华法林", "选择性5-羟色胺再摄取抑制剂"],
        "items": ["1", "2"],
        "drugs": ["warfarin", "sertraline"],
    }
    assert wording.evidence_text(evidence, NAMES) == "相互作用双方 华法林 × 选择性5-羟色胺再摄取抑制剂"
    assert wording.finding_items({"item": "2", "evidence": evidence}) == ["2", "1"]


def test_evidence_of_a_dose_reads_value_limit_unit() -> None:
    evidence = {
        "daily": 900,
        "age": 48,
        "form_group": "oral_solid",
        "limit": 600,
        "unit": "mg",
        "regimen": "adult",
        "value": 900,
    }
    assert (
        wording.evidence_text(evidence, NAMES)
        == "日剂量 900 mg，上限 600 mg；年龄 48 岁；剂型类别 口服固体制剂；适用人群 成人"
    )


def test_evidence_with_drug_ids_and_codes_reads_as_words() -> None:
    prescription = {"diagnoses": [{"code": "I10.x00", "name": "原发性高血压"}]}
    evidence = {"diagnoses": ["I10.x00"], "codes": ["I20", "I21", "I22", "I23", "I24", "I25", "I63", "G45"]}
    assert wording.evidence_text(evidence, NAMES, prescription) == (
        "诊断 I10.x00 原发性高血压；适应证诊断 I20、I21、I22、I23、I24、I25 等 8 类"
    )
    assert wording.evidence_text({"facility_level": "village", "drug": "levofloxacin"}, NAMES) == (
        "机构级别 村卫生室；药品 左氧氟沙星"
    )
    assert wording.evidence_text({"egfr": 24, "limit": 30}) == "eGFR 24 mL/min/1.73m²；阈值 30 mL/min/1.73m²"
    assert wording.evidence_text({"pregnant": 1, "sex": "F"}) == "妊娠 是；性别 女"


def test_engine_words_and_codes_in_chinese() -> None:
    assert (
        wording.message_text("地高辛日剂量 0.375mg 超过上限 0.25mg（elderly）")
        == "地高辛日剂量 0.375mg 超过上限 0.25mg（老年）"
    )
    assert wording.hepatic_text("none") == "正常（无损害）" and wording.hepatic_text(None) == "未填"
    assert wording.visit_text("chronic") == "慢病长期处方"
    assert wording.route_text("IVGTT") == "静滴" and wording.frequency_text("qn") == "每晚1次"


def test_no_emoji_in_the_ui() -> None:
    """Icons are Streamlit's Material Symbols: an emoji is an empty box on a PC without an emoji font."""
    emoji = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0f]")
    root = Path(__file__).resolve().parents[2] / "review_ui"
    found = [(p.name, m.group()) for p in root.rglob("*.py") for m in emoji.finditer(p.read_text(encoding="utf-8"))]
    assert not found, found
