"""Red-team findings on the review UI, each reproduced and now refused (AppTest, SQLite and PostgreSQL):

1. facility scope — a pharmacist limited to some facilities reaches no other facility's item by
   any page, list, search, statistics, session state or URL (``?item=``);
2. HIS text is shown as text — markdown image/link/HTML payloads in every text field render as
   inert text (no link, no image, no autolink);
3. sign-in throttling — atomic, and an attacker's lockout does not lock out the real user;
4. passing a critical finding needs a chosen reason and a comment, errors shown in place;
5. the admin rulebook check runs in a time-limited subprocess.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

from review_ui import auth, rulebook_check
from tests.review_ui.conftest import all_text
from tests.review_ui.helpers import (
    DEMO_USERS,
    EVIL_HOST,
    PAYLOAD,
    RULES,
    evil_prescription,
    evil_result,
    prescription,
    result,
    seed,
)
from tests.review_ui.test_pages import button, no_exception


def wait_until(condition, cap: float = 60.0, step: float = 0.05) -> bool:
    """Poll ``condition`` until true or a generous cap passes (no speed assumption)."""
    deadline = time.monotonic() + cap
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return bool(condition())


# --- 1. facility scope ---------------------------------------------------------------------------
# seed(): facilities rotate by n % 3 → n=1 HXZ, 2 DSZ, 3 LZH, 4 HXZ, 5 DSZ, 6 LZH. yao02 serves LZH, HXZ.

OTHER_FACILITY_RX = ("RX-000002", "RX-000005")
OTHER_FACILITY_PATIENTS = ("P-00002", "P-00005")


def other_facility_item_ids(queue) -> list[int]:
    return [i.id for i in queue.list_items(facility="DSZ", limit=50)]


def shown_text(at) -> str:
    """What the app shows, except what the user typed into inputs (a query is not a leak)."""
    parts: list[str] = []

    def walk(node) -> None:
        if getattr(node, "type", None) not in ("text_input", "text_area"):
            for attr in ("value", "body", "label", "help", "placeholder"):
                value = getattr(node, attr, None)
                if isinstance(value, str):
                    parts.append(value)
            if getattr(node, "type", None) in ("arrow_data_frame", "dataframe"):
                parts.append(node.value.to_string())
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(parts)


def assert_no_other_facility_data(at) -> None:
    text = shown_text(at)
    for secret in (*OTHER_FACILITY_RX, *OTHER_FACILITY_PATIENTS, "DSZ"):
        assert secret not in text, secret


def test_pages_reach_queue_only_through_the_scoped_service() -> None:
    """No page can forget the scope: none holds the raw queue."""
    root = Path(__file__).resolve().parents[2] / "review_ui"
    for path in (root / "views").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert "backend.queue(" not in source, path
        assert "stats_extra." not in source, path


def test_scoped_pharmacist_workbench_counts_and_lists_own_facilities_only(app, queue) -> None:
    seed(queue, 6)
    at = app("yao02").run()
    no_exception(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["待审 pending"] == "4"
    table = at.dataframe[0].value
    assert set(table["机构 facility"]) <= {"LZH分院", "HXZ分院"}
    assert_no_other_facility_data(at)
    # A facility typed into the workbench state does not widen the scope either.
    at.session_state["wb_f_facility"] = ["LZH"]
    at.run()
    assert {m.label: m.value for m in at.metric}["待审 pending"] == "2"


def test_scoped_pharmacist_cannot_open_other_facility_item_by_url_or_state(app, queue) -> None:
    seed(queue, 6)
    for item_id in other_facility_item_ids(queue):
        # Search page deep link ?item=…
        at = app("yao02")
        at.query_params["item"] = str(item_id)
        at.run()
        at.switch_page("views/search.py").run()
        no_exception(at)
        assert any("不存在" in w.value for w in at.warning)
        assert_no_other_facility_data(at)
        # The workbench's current item, forced into the session.
        at = app("yao02")
        at.session_state["wb_item"] = item_id
        at.run()
        no_exception(at)
        assert at.session_state["wb_item"] is None
        assert_no_other_facility_data(at)
        assert not [b for b in at.button if "通过 Pass" in (b.label or "")]
    # Control: an unrestricted pharmacist does open it by the same link.
    at = app("yao01")
    at.query_params["item"] = str(other_facility_item_ids(queue)[0])
    at.run()
    at.switch_page("views/search.py").run()
    no_exception(at)
    assert "RX-000002" in all_text(at) or "RX-000005" in all_text(at)


def test_scoped_pharmacist_search_never_returns_other_facilities(app, queue) -> None:
    seed(queue, 6)
    at = app("yao02").run()
    at.switch_page("views/search.py").run()
    for field, value in (("s_rx", "RX-000002"), ("s_patient", "P-00005"), ("s_facility", "DSZ")):
        at.text_input(key=field).input(value)
        button(at, "检索 Search").click().run()
        no_exception(at)
        assert any("无结果" in i.value for i in at.info), field
        assert_no_other_facility_data(at)
        at.text_input(key=field).input("")
    button(at, "检索 Search").click().run()  # everything this pharmacist may see
    table = at.dataframe[0].value
    assert set(table["处方 prescription"]) == {"RX-000001", "RX-000003", "RX-000004", "RX-000006"}
    assert_no_other_facility_data(at)


def test_scoped_pharmacist_statistics_cover_own_facilities_only(app, queue) -> None:
    seed(queue, 6)
    admin = app("admin")
    admin.session_state["st_preset"] = "全部 all"  # the seeded prescriptions were issued in 2025
    admin.run()
    admin.switch_page("views/statistics.py").run()
    no_exception(admin)
    assert {m.label: m.value for m in admin.metric}["审核处方 audited"] == "6"  # fills the shared cache first
    at = app("yao02")
    at.session_state["st_preset"] = "全部 all"
    at.run()
    at.switch_page("views/statistics.py").run()
    no_exception(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["审核处方 audited"] == "4"
    assert metrics["待审 waiting"] == "4"
    assert_no_other_facility_data(at)


def test_scoped_service_refuses_other_facility_items(queue) -> None:
    from review_ui.service import ReviewService
    from rx_audit import NotFoundError

    seed(queue, 6)
    records = auth.load_users(DEMO_USERS)
    service = ReviewService(queue, records["yao02"].user)
    for item_id in other_facility_item_ids(queue):
        with pytest.raises(NotFoundError):
            service.get(item_id)
        with pytest.raises(NotFoundError):
            service.claim(item_id)
    assert service.claim_next(facilities=["DSZ"]) is None  # asking for another facility: nothing
    claimed = service.claim_next()
    assert claimed is not None and claimed.facility_id in ("LZH", "HXZ")
    assert ReviewService(queue, records["admin"].user).scope is None


# --- 2. HIS text is shown as text ----------------------------------------------------------------

_MD = MarkdownIt("commonmark")


def rendered_markdown(at) -> list[str]:
    """The source of every element Streamlit renders as Markdown (not code, text or table cells)."""
    plain = {"code", "text", "arrow_data_frame", "dataframe", "json", "text_input", "text_area"}
    out: list[str] = []

    def walk(node) -> None:
        if getattr(node, "type", None) not in plain:
            for attr in ("value", "body", "label"):
                value = getattr(node, attr, None)
                if isinstance(value, str):
                    out.append(value)
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return out


def assert_inert(at) -> None:
    bodies = [b for b in rendered_markdown(at) if "evil" in b]
    assert bodies, "the payload text is shown"
    for body in bodies:
        html = _MD.render(body)
        assert "<a " not in html and "<img" not in html and "<script" not in html, (body, html)
        assert "<code>" not in html and "<strong>bold</strong>" not in html, (body, html)
        # GFM autolinks are found after escapes are resolved: every trigger must be broken.
        unescaped = body.replace("\\", "").lower()
        for trigger in ("http://", "https://", f"www.{EVIL_HOST}", f"@{EVIL_HOST}"):
            assert trigger not in unescaped, (trigger, body)
        # Streamlit's colour directives and LaTeX stay literal.
        assert ":red[red]" not in body and "$x^2$" not in body, body


def test_markdown_payloads_in_his_text_render_inert(app, queue, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    record = evil_prescription()
    first = queue.submit(record, evil_result(record))
    at = app("yao01").run()
    button(at, "领取下一张").click().run()
    no_exception(at)
    assert at.session_state["wb_item"] == first.id
    assert_inert(at)
    # A queue comment and a doctor's double-sign reason carry payloads too.
    at.selectbox(key=f"wb_rr_{first.id}").select("R06")
    at.text_area(key=f"wb_rc_{first.id}").input(f"请核实 {PAYLOAD}")
    button(at, "退回 Return").click().run()
    no_exception(at)
    queue.double_sign(record["id"], "D1", f"坚持用药 {PAYLOAD}")
    button(at, "领取下一张").click().run()
    no_exception(at)
    assert any("医生双签理由" in w.value for w in at.warning)
    assert_inert(at)
    # The same item in Search (read-only detail, history expanded), by its link.
    search = app("yao01")
    search.query_params["item"] = str(at.session_state["wb_item"])
    search.run()
    search.switch_page("views/search.py").run()
    no_exception(search)
    assert any("处方 RX-EVIL-900" in h.value for h in search.subheader)
    assert_inert(search)
    assert "患者姓名不应出现" not in caplog.text and "患者姓名不应出现" not in all_text(search)


def test_markdown_helper_escapes_and_breaks_autolinks() -> None:
    from review_ui import ui

    for text in (PAYLOAD, "`P-1`", "a\n# h\n> q\n- l", "<script>x</script>", None, 3.5):
        escaped = ui.md(text)
        html = _MD.render(escaped)
        assert "<a " not in html and "<img" not in html and "<script" not in html and "<h1" not in html
        assert "<code>" not in html and "<blockquote>" not in html and "<li>" not in html
    assert ui.md(None) == "—"
    assert ui.md("二甲双胍 500mg").replace("\\", "") == "二甲双胍 500mg"


# --- 3. sign-in throttling -----------------------------------------------------------------------


@pytest.fixture
def fresh_throttle(monkeypatch: pytest.MonkeyPatch) -> auth._Throttle:
    throttle = auth._Throttle()
    monkeypatch.setattr(auth, "throttle", throttle)
    return throttle


@pytest.fixture
def counted_bcrypt(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    lock = threading.Lock()
    real = auth.bcrypt.checkpw

    def checkpw(password: bytes, hashed: bytes) -> bool:
        with lock:
            calls.append(1)
        return real(password, hashed)

    monkeypatch.setattr(auth.bcrypt, "checkpw", checkpw)
    return calls


def test_parallel_sign_ins_reach_bcrypt_at_most_the_limit(fresh_throttle, counted_bcrypt) -> None:
    records = auth.load_users(DEMO_USERS)
    start = threading.Barrier(16)
    outcomes: list[auth.SignInResult] = []
    lock = threading.Lock()

    def attempt() -> None:
        start.wait()
        outcome = auth.sign_in(records, "yao01", "wrong-guess", "10.6.6.6")
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=attempt) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(counted_bcrypt) == auth.MAX_FAILURES
    assert sum(o.wait_seconds > 0 for o in outcomes) == 16 - auth.MAX_FAILURES
    assert all(o.user is None for o in outcomes)


def test_attacker_lockout_does_not_lock_out_the_user(fresh_throttle, counted_bcrypt) -> None:
    records = auth.load_users(DEMO_USERS)
    for _ in range(auth.MAX_FAILURES + 3):
        assert auth.sign_in(records, "yao01", "guess", "10.6.6.6").user is None
    # The attacker's address is locked — even with the right password (no check is run at all).
    locked = auth.sign_in(records, "yao01", "yao01-demo", "10.6.6.6")
    assert locked.user is None and locked.wait_seconds > 0
    assert len(counted_bcrypt) == auth.MAX_FAILURES
    # The pharmacist at their own workstation signs in.
    assert auth.sign_in(records, "yao01", "yao01-demo", "10.1.2.3").user is not None


def test_global_ceiling_spares_the_users_known_address(fresh_throttle) -> None:
    records = auth.load_users(DEMO_USERS)
    assert auth.sign_in(records, "yao01", "yao01-demo", "10.1.2.3").user is not None  # known from now on
    for n in range(auth.GLOBAL_MAX_FAILURES):  # a distributed attack: one guess per address
        fresh_throttle.fail("yao01", f"172.16.{n // 250}.{n % 250}")
    assert fresh_throttle.locked_for("yao01", "10.9.9.9") > 0  # a new address: refused
    assert fresh_throttle.locked_for("yao01", "10.1.2.3") == 0  # the user's workstation: not
    assert auth.sign_in(records, "yao01", "yao01-demo", "10.1.2.3").user is not None


def test_signin_page_lockout_is_per_address(app, queue, fresh_throttle, monkeypatch) -> None:
    address = {"value": "10.6.6.6"}
    monkeypatch.setattr(auth, "client_address", lambda *_args, **_kw: address["value"])
    at = app(None).run()
    for _ in range(auth.MAX_FAILURES):
        at.text_input(key="signin_user").input("yao01")
        at.text_input(key="signin_password").input("guess")
        button(at, "登录 Sign in").click().run()
        assert any("错误" in e.value for e in at.error)
    at.text_input(key="signin_password").input("yao01-demo")
    button(at, "登录 Sign in").click().run()
    assert any("尝试次数过多" in e.value for e in at.error)
    assert "rx_user" not in at.session_state
    # The real pharmacist, elsewhere, with the right password.
    address["value"] = "10.1.2.3"
    real = app(None).run()
    real.text_input(key="signin_user").input("yao01")
    real.text_input(key="signin_password").input("yao01-demo")
    button(real, "登录 Sign in").click().run()
    no_exception(real)
    assert real.session_state["rx_user"]["id"] == "yao01"


def test_client_address_believes_forwarded_for_only_from_a_trusted_proxy(monkeypatch) -> None:
    import types

    import streamlit

    headers = {"X-Forwarded-For": "6.6.6.6, 10.1.2.3"}
    monkeypatch.setattr(streamlit, "context", types.SimpleNamespace(ip_address="10.9.0.1", headers=headers))
    assert auth.client_address() == "10.9.0.1"  # no proxy trusted: the TCP peer, header ignored
    assert auth.client_address(("10.9.0.1",)) == "10.1.2.3"  # the hop the trusted proxy appended
    monkeypatch.setattr(streamlit, "context", types.SimpleNamespace(ip_address=None, headers={}))
    assert auth.client_address() == "127.0.0.1"


# --- 4. passing a critical finding ---------------------------------------------------------------


def elements_in_order(at) -> list[Any]:
    out: list[Any] = []

    def walk(node) -> None:
        out.append(node)
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return out


def error_after(at, anchor_key: str, text: str) -> bool:
    """An error containing ``text`` follows the widget ``anchor_key`` in the same form, before the
    next widget — i.e. it is shown next to the control, not at the top of the page."""
    nodes = elements_in_order(at)
    keys = [getattr(n, "key", None) for n in nodes]
    start = keys.index(anchor_key)
    for node in nodes[start + 1 :]:
        if getattr(node, "type", None) == "error":
            if text in (getattr(node, "value", "") or ""):
                return True
            continue
        if getattr(node, "key", None) and node.key != anchor_key:
            return False
    return False


def claim_one(app, queue, severity: str = "critical"):
    record = prescription(1)
    queue.submit(record, result(record, severity=severity))
    at = app("yao01").run()
    button(at, "领取下一张").click().run()
    no_exception(at)
    return at, at.session_state["wb_item"]


def test_critical_pass_needs_chosen_reason_and_comment_in_place(app, queue) -> None:
    at, item_id = claim_one(app, queue)
    assert at.selectbox(key=f"wb_ar_{item_id}").value is None  # no preselected reason for critical
    button(at, "通过 Pass").click().run()
    no_exception(at)
    assert queue.get(item_id).item.status == "claimed"
    assert error_after(at, f"wb_ar_{item_id}", "通过原因")
    assert error_after(at, f"wb_ac_{item_id}", "备注")
    at.selectbox(key=f"wb_ar_{item_id}").select("A01")
    button(at, "通过 Pass").click().run()
    assert queue.get(item_id).item.status == "claimed"
    assert error_after(at, f"wb_ac_{item_id}", "备注")
    assert not error_after(at, f"wb_ar_{item_id}", "通过原因")
    at.text_area(key=f"wb_ac_{item_id}").input("已电话确认医生：患者透析中，短期使用")
    button(at, "通过 Pass").click().run()
    no_exception(at)
    detail = queue.get(item_id)
    assert detail.item.status == "approved" and detail.item.reason_code == "A01"
    assert [(d.action, d.comment) for d in detail.decisions] == [("approve", "已电话确认医生：患者透析中，短期使用")]


def test_queue_refusal_of_critical_pass_is_shown_in_place(app, queue, monkeypatch) -> None:
    """Even if the UI's own check were bypassed, the queue refuses (ReasonRequiredError), shown in the form."""
    from review_ui.service import ReviewService

    real_get = ReviewService.get

    def downgraded(self, item_id):  # the UI believes the item is only a warning
        detail = real_get(self, item_id)
        item = detail.item.model_copy(update={"severity": "warning"})
        findings = [{**f, "severity": "warning"} for f in detail.result["findings"]]
        return detail.model_copy(update={"item": item, "result": {**detail.result, "findings": findings}})

    monkeypatch.setattr(ReviewService, "get", downgraded)
    at, item_id = claim_one(app, queue)
    assert at.selectbox(key=f"wb_ar_{item_id}").value is None  # a "warning" has no preselected reason either
    at.selectbox(key=f"wb_ar_{item_id}").select("A01")
    button(at, "通过 Pass").click().run()
    no_exception(at)
    assert queue.get(item_id).item.status == "claimed"
    nodes = elements_in_order(at)
    keys = [getattr(n, "key", None) for n in nodes]
    after_pass = nodes[keys.index(f"wb_ac_{item_id}") + 1 :]
    refusals = [n for n in after_pass if getattr(n, "type", None) == "error" and "队列拒绝" in n.value]
    assert refusals, "the queue's refusal is shown in the approve form"
    assert not [e for e in at.error if "队列拒绝" in e.value and e not in refusals]


def test_warning_pass_needs_a_chosen_reason_comment_optional(app, queue) -> None:
    """A warning: no preselected reason (passing is a choice, not a default), the error beside the
    reason and beside the Pass button; with the reason chosen it passes without a comment."""
    at, item_id = claim_one(app, queue, severity="warning")
    assert at.selectbox(key=f"wb_ar_{item_id}").value is None
    button(at, "通过 Pass").click().run()
    no_exception(at)
    assert queue.get(item_id).item.status == "claimed"
    assert error_after(at, f"wb_ar_{item_id}", "通过原因")
    at.selectbox(key=f"wb_ar_{item_id}").select("A01")
    button(at, "通过 Pass").click().run()
    no_exception(at)
    item = queue.get(item_id).item
    assert item.status == "approved" and item.reason_code == "A01"


# --- 5. admin rulebook check out of process ------------------------------------------------------


def processes_with(marker: str) -> list[int]:
    """Live processes whose command line contains ``marker`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().split(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def test_admin_check_that_hangs_returns_with_a_timeout(app, queue, monkeypatch) -> None:
    marker = f"rx-audit-hung-check-{uuid.uuid4().hex}"
    hang = f"import time; time.sleep(3600)  # {marker}"
    monkeypatch.setattr(rulebook_check, "check_command", lambda: [sys.executable, "-c", hang])
    monkeypatch.setenv("RX_AUDIT_CHECK_TIMEOUT", "2")
    at = app("admin", timeout=120).run()
    at.switch_page("views/admin.py").run()
    at.text_input(key="admin_rules_path").input(str(RULES))
    button(at, "检查 Check").click().run()
    no_exception(at)
    assert any("超时" in e.value and "timed out" in e.value for e in at.error)
    assert not [b for b in at.button if "启用" in (b.label or "")]
    # The hung child was killed with its process group, not left running.
    assert wait_until(lambda: not processes_with(marker)), processes_with(marker)


def test_admin_check_output_is_text_and_changed_folder_needs_a_new_check(app, queue, tmp_path: Path) -> None:
    import shutil

    fresh = tmp_path / "rules_v3"
    shutil.copytree(RULES, fresh)
    with (fresh / "drugs" / "metformin.yaml").open("a", encoding="utf-8") as handle:
        handle.write("\n# v3\n")
    at = app("admin", timeout=120).run()
    at.switch_page("views/admin.py").run()
    live = at.code[0].value
    at.text_input(key="admin_rules_path").input(str(fresh))
    button(at, "检查 Check").click().run()
    no_exception(at)
    outputs = [c.value for c in at.code]
    assert any("passed" in o for o in outputs)  # `rules test` output, shown as plain text
    with (fresh / "drugs" / "metformin.yaml").open("a", encoding="utf-8") as handle:
        handle.write("\n# changed after the check\n")
    button(at, "启用此版本").click().run()
    no_exception(at)
    assert any("已改变" in e.value for e in at.error)
    from review_ui import backend

    assert backend._auditor(str(RULES)).rulebook_hash == live


def test_check_command_defaults_to_this_interpreters_rx_audit() -> None:
    command = rulebook_check.check_command()
    assert command[0].startswith(str(Path(sys.executable).parent)) or command[:3] == [
        sys.executable,
        "-m",
        "rx_audit.cli",
    ]
    report = rulebook_check.check(str(RULES), timeout=300)
    assert not report.timed_out and report.runs and report.runs[0].returncode == 0, report.runs[0].output[-2000:]
    assert report.hash and report.hash.startswith("sha256:")
    assert report.fingerprint == rulebook_check.fingerprint(RULES)
