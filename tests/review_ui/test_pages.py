"""AppTest of every page and the main flows of ``streamlit run review_ui``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.review_ui.conftest import all_text
from tests.review_ui.helpers import RULES, seed

TIMEOUT = 30


def button(at, label: str):
    matches = [b for b in at.button if label in (b.label or "")]
    assert matches, f"no button {label!r}: {[b.label for b in at.button]}"
    return matches[0]


def no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def choose_pass(at, reason: str = "A01", comment: str = "已核实，临床需要 (checked: clinically needed)") -> None:
    """Fill the pass form of the open item: the seeded items carry a critical finding, which can only
    be passed with a chosen reason and a comment (no preselected default)."""
    item_id = at.session_state["wb_item"]
    at.selectbox(key=f"wb_ar_{item_id}").select(reason)
    at.text_area(key=f"wb_ac_{item_id}").input(comment)


# --- signed out --------------------------------------------------------------------------------


def test_signed_out_view_shows_no_patient_data(app, queue) -> None:
    seed(queue, 3)
    at = app(None).run()
    no_exception(at)
    text = all_text(at)
    assert "登录 Sign in" in text or at.text_input(key="signin_user")
    for secret in ("RX-000001", "P-00001", "二甲双胍", "eGFR", "待审"):
        assert secret not in text
    # Only the sign-in page is registered: data pages cannot even be switched to.
    with pytest.raises(ValueError):
        at.switch_page("views/workbench.py")


def test_sign_in_with_password_opens_workbench(app, queue) -> None:
    seed(queue, 2)
    at = app(None).run()
    at.text_input(key="signin_user").input("yao01")
    at.text_input(key="signin_password").input("wrong")
    button(at, "登录 Sign in").click().run()
    assert any("错误" in e.value for e in at.error)
    assert "rx_user" not in at.session_state
    at.text_input(key="signin_user").input("yao01")
    at.text_input(key="signin_password").input("yao01-demo")
    button(at, "登录 Sign in").click().run()
    no_exception(at)
    assert at.session_state["rx_user"]["id"] == "yao01"
    assert any("审方工作台" in t.value for t in at.title)
    assert {m.label: m.value for m in at.metric}["待审 pending"] == "2"


def test_sign_out_clears_the_session(app, queue) -> None:
    at = app("yao01").run()
    button(at, "退出登录").click().run()
    no_exception(at)
    assert "rx_user" not in at.session_state
    assert at.text_input(key="signin_user") is not None


def test_oidc_identity_gets_role_from_users_file(app, queue) -> None:
    at = app(None)
    at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x"}
    at.user = {"is_logged_in": True, "email": "director@example.org", "name": "Director"}
    at.run()
    no_exception(at)
    assert at.session_state["rx_user"]["role"] == "admin"
    assert at.session_state["rx_user"]["via"] == "oidc"


def test_signin_page_offers_sso_only_when_usable(app, queue) -> None:
    at = app(None)
    at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x"}
    at.user = {"is_logged_in": False}
    at.run()
    no_exception(at)
    from review_ui import auth

    if auth.authlib_installed():
        assert [b for b in at.button if "SSO" in (b.label or "")]
    else:
        assert any("Authlib" in w.value for w in at.warning)
    assert at.text_input(key="signin_user") is not None  # local accounts still work


def test_oidc_identity_not_in_users_file_is_refused(app, queue) -> None:
    seed(queue, 1)
    at = app(None)
    at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x"}
    at.user = {"is_logged_in": True, "email": "stranger@example.org"}
    at.run()
    no_exception(at)
    assert "rx_user" not in at.session_state
    assert any("未授权" in e.value for e in at.error)
    assert "RX-000001" not in all_text(at)


def test_idle_session_is_signed_out(app, queue) -> None:
    at = app("yao01")
    at.session_state["rx_last_seen"] = 0.0  # 1970: long idle
    at.run()
    assert "rx_user" not in at.session_state


# --- workbench ---------------------------------------------------------------------------------


def test_workbench_counts_and_queue_list(app, queue) -> None:
    seed(queue, 5)
    at = app("yao01").run()
    no_exception(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["待审 pending"] == "5"
    assert metrics["我审核中 claimed by me"] == "0"
    assert at.dataframe, "the queue list is shown"


def test_claim_then_pass(app, queue) -> None:
    seed(queue, 2)
    at = app("yao01").run()
    button(at, "领取下一张").click().run()
    no_exception(at)
    first = at.session_state["wb_item"]
    assert first is not None
    text = all_text(at)
    assert "二甲双胍禁用" in text and "metformin.contraindication.egfr_lt_30" in text
    assert "rules/drugs/metformin.yaml:41" in text
    assert "患者姓名不应出现" not in text  # the UI never shows a patient name
    choose_pass(at)
    button(at, "通过 Pass").click().run()
    no_exception(at)
    item = queue.get(first).item
    assert item.status == "approved"
    assert item.decided_by == "yao01"
    assert item.reason_code == "A01"
    # The next item opened by itself.
    assert at.session_state["wb_item"] not in (None, first)
    assert any("已通过" in s.value for s in at.success)


def test_claim_then_return_requires_a_reason(app, queue) -> None:
    seed(queue, 1)
    at = app("yao01").run()
    button(at, "领取下一张").click().run()
    item_id = at.session_state["wb_item"]
    button(at, "退回 Return").click().run()
    assert any("退回原因" in e.value for e in at.error)
    assert queue.get(item_id).item.status == "claimed"

    at.selectbox(key=f"wb_rr_{item_id}").select("R06")  # 存在用药禁忌
    at.text_area(key=f"wb_rc_{item_id}").input("请核实肾功能后改用其他降糖药")
    button(at, "退回 Return").click().run()
    no_exception(at)
    detail = queue.get(item_id)
    assert detail.item.status == "returned"
    assert detail.item.decided_by == "yao01" and detail.item.reason_code == "R06"
    assert [(d.action, d.reason_code, d.comment) for d in detail.decisions] == [
        ("return", "R06", "请核实肾功能后改用其他降糖药")
    ]
    assert at.session_state["wb_item"] is None  # queue empty: nothing more to open
    assert any("没有更多待审处方" in s.value for s in at.success)


def test_facility_restricted_pharmacist_only_claims_own_facilities(app, queue) -> None:
    seed(queue, 6)  # facilities rotate LZH/HXZ/DSZ
    at = app("yao02").run()
    button(at, "领取下一张").click().run()
    seen = []
    while at.session_state["wb_item"] is not None:
        item_id = at.session_state["wb_item"]
        seen.append(queue.get(item_id).item.facility_id)
        choose_pass(at)
        button(at, "通过 Pass").click().run()
        no_exception(at)
    assert sorted(seen) == ["HXZ", "HXZ", "LZH", "LZH"]
    assert queue.count(status="pending", facility="DSZ") == 2


# --- other pages -------------------------------------------------------------------------------


def test_search_page_finds_by_prescription_id(app, queue) -> None:
    seed(queue, 3)
    at = app("yao01").run()
    at.switch_page("views/search.py").run()
    no_exception(at)
    at.text_input(key="s_rx").input("RX-000002")
    button(at, "检索 Search").click().run()
    no_exception(at)
    table = at.dataframe[0].value
    assert list(table["处方 prescription"]) == ["RX-000002"]
    assert "RX-000003" not in all_text(at)


def test_statistics_page_renders(app, queue) -> None:
    seed(queue, 3)
    at = app("yao01").run()
    button(at, "领取下一张").click().run()
    choose_pass(at)
    button(at, "通过 Pass").click().run()
    at.switch_page("views/statistics.py").run()
    no_exception(at)
    assert any("统计" in t.value for t in at.title)
    assert at.metric


def test_rulebook_page_browse_and_trial_audit(app, queue) -> None:
    at = app("yao01").run()
    at.switch_page("views/rulebook.py").run()
    no_exception(at)
    assert "metformin" in all_text(at)
    button(at, "试审 Audit").click().run()
    no_exception(at)
    assert any("flagged" in e.value or "拦截" in e.value for e in at.error)
    assert queue.count(status="pending") == 0  # a trial audit is never queued


def test_admin_page_hidden_from_pharmacists(app, queue) -> None:
    at = app("yao01").run()
    with pytest.raises(ValueError):
        at.switch_page("views/admin.py")


def test_admin_checks_and_reloads_a_rulebook(app, queue, tmp_path: Path) -> None:
    at = app("admin").run()
    at.switch_page("views/admin.py").run()
    no_exception(at)
    live_hash = at.code[0].value
    assert live_hash.startswith("sha256:")

    broken = tmp_path / "broken_rules"
    shutil.copytree(RULES, broken)
    (broken / "drugs" / "metformin.yaml").write_text("drug: [unclosed\n", encoding="utf-8")
    at.text_input(key="admin_rules_path").input(str(broken))
    button(at, "检查 Check").click().run()
    no_exception(at)
    assert any("错误" in e.value for e in at.error)
    assert not [b for b in at.button if "启用" in (b.label or "")]

    fresh = tmp_path / "rules_v2"
    shutil.copytree(RULES, fresh)
    with (fresh / "drugs" / "metformin.yaml").open("a", encoding="utf-8") as handle:
        handle.write("\n# v2: reviewed by the pharmacy committee\n")
    at.text_input(key="admin_rules_path").input(str(fresh))
    button(at, "检查 Check").click().run()
    no_exception(at)
    force = [c for c in at.checkbox if c.key == "admin_force"]
    if force:  # some rule-file examples fail in this rulebook: the admin must confirm
        force[0].check().run()
    button(at, "启用此版本").click().run()
    no_exception(at)
    new_hash = at.code[0].value
    assert new_hash != live_hash
    from review_ui import backend

    assert backend._auditor(str(RULES)).rulebook_hash == new_hash
    # restore the shared auditor for later tests in this process
    backend._auditor(str(RULES)).reload(RULES)


def test_patient_names_never_logged_or_shown(app, queue, caplog: pytest.LogCaptureFixture) -> None:
    seed(queue, 2)
    caplog.set_level("DEBUG")
    at = app("yao01").run()
    button(at, "领取下一张").click().run()
    choose_pass(at)
    button(at, "通过 Pass").click().run()
    at.switch_page("views/search.py").run()
    at.text_input(key="s_patient").input("P-00002")
    button(at, "检索 Search").click().run()
    no_exception(at)
    assert "患者姓名不应出现" not in caplog.text
    assert "患者姓名不应出现" not in all_text(at)
    assert "decision user=yao01" in caplog.text  # decisions are logged by ids only


def test_no_unsafe_html_and_safe_streamlit_config() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[2]
    for path in (root / "review_ui").rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert "unsafe_allow_html" not in source, path  # not even set to False
        assert "st.html(" not in source, path
    config = tomllib.loads((root / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    # "none": no message, type or traceback in the browser (false would still show tracebacks).
    assert config["client"]["showErrorDetails"] == "none"
    assert config["client"]["toolbarMode"] == "minimal"


def test_claim_next_filters(app, queue) -> None:
    seed(queue, 6)
    at = app("yao01").run()
    at.text_input(key="wb_f_facility_text").input("DSZ").run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["待审 pending"] == "2"
    button(at, "领取下一张").click().run()
    assert queue.get(at.session_state["wb_item"]).item.facility_id == "DSZ"
