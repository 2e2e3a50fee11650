"""End to end in a real browser: ``streamlit run review_ui`` on a free local port, driven by
Playwright with Debian's chromium (no browser download): a pharmacist's whole session (claim,
refused critical pass, return, next from the top, countdown, warning pass, resubmission diff,
patient history, give back), then every page as admin, then the Markdown red-team item.
Screenshots of every page at 1440×900 go to ``tests/review_ui/screenshots/`` (gitignored, but for
the two the README shows).

Needs ``/usr/bin/chromium`` and a CJK font (``scripts/browser.sh`` installs both). Without them
the test is skipped locally, and FAILS in CI (``CI=true``): a browser test that silently skips
in CI proves nothing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.review_ui.helpers import (
    CHINA,
    DEMO_USERS,
    EVIL_HOST,
    ROOT,
    RULES,
    evil_prescription,
    evil_result,
    prescription,
    result,
    seed,
)

CHROMIUM = os.environ.get("RX_AUDIT_CHROMIUM", "/usr/bin/chromium")  # Debian's; override only to test the CI rule
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
IN_CI = os.environ.get("CI", "").lower() == "true"

pytestmark = pytest.mark.e2e


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} — in CI the browser test must run (scripts/browser.sh installs chromium)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"streamlit not healthy at {url} after {timeout}s")


@pytest.fixture
def browser_ready() -> None:
    """Chromium and Playwright's python package present, else skip (locally) or fail (CI)."""
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} not installed")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("playwright (python package) not installed")


@pytest.fixture
def server(browser_ready: None, tmp_path: Path) -> Iterator[dict]:
    from rx_audit import ReviewQueue, migrate

    db_url = f"sqlite:///{tmp_path / 'e2e.db'}"
    migrate(db_url)
    queue = ReviewQueue(db_url)
    submitted = seed(queue, 3)
    port = _free_port()
    env = {
        **os.environ,
        "RX_AUDIT_DB_URL": db_url,
        "RX_AUDIT_USERS": str(DEMO_USERS),
        "RX_AUDIT_RULES": str(RULES),
        "RX_AUDIT_REFRESH_SECONDS": "3",
    }
    env.pop("RX_AUDIT_CONFIG", None)
    env.pop("RX_AUDIT_DB", None)
    log_path = tmp_path / "streamlit.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "review_ui",
                "--server.port",
                str(port),
                "--server.address",
                "127.0.0.1",
                "--server.headless",
                "true",
                "--browser.gatherUsageStats",
                "false",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        yield {"url": url, "queue": queue, "submitted": submitted, "log": log_path}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def seed_session(queue) -> dict[str, int]:
    """A pharmacist's session worth of work, in queue order: a critical item, a warning item whose
    patient has an earlier (unflagged) prescription, and a doctor's resubmission of a returned one."""
    from rx_audit import AuditResult

    old = prescription(40, facility="LZH", when=datetime(2025, 3, 1, 9, 0, tzinfo=CHINA))
    old["id"], old["patient"]["id"] = "RX-OLD-0040", "P-00102"
    queue.submit(old, AuditResult(id=old["id"], flagged=False, rulebook="sha256:t", findings=[]))
    warning = prescription(102, facility="LZH")
    w_item = queue.submit(warning, result(warning, severity="warning"))
    critical = prescription(101, facility="LZH")
    c_item = queue.submit(critical, result(critical, severity="critical"))
    first = prescription(103, facility="LZH")
    r_item = queue.submit(first, result(first, severity="critical"))
    queue.claim(r_item.id, "yao02")
    queue.return_to_doctor(r_item.id, "yao02", "R06", "eGFR 24，请停用二甲双胍")
    second = prescription(103, facility="LZH")
    second["items"][0]["dose"] = {"value": 250, "unit": "mg"}
    v2 = queue.resubmit(second, result(second, severity="warning"), doctor_id="D003")
    return {"critical": c_item.id, "warning": w_item.id, "resubmission": v2.id}


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the select box ``label``. A rerun of a fragment (the queue refresh, the
    lease keeper) can close an open dropdown, so the pick is retried until it holds."""
    from playwright.sync_api import Error

    for _attempt in range(5):
        page.get_by_label(label).click()
        try:
            page.get_by_role("option", name=option).first.click(timeout=3_000)
            return
        except Error:
            page.keyboard.press("Escape")
    raise AssertionError(f"could not choose {option!r} in {label!r}")


def scroll_top(page) -> float:
    """How far Streamlit's main area (or the window) is scrolled, in CSS pixels."""
    return page.evaluate(
        """() => Math.max(window.scrollY,
             ...['[data-testid="stMain"]', '[data-testid="stAppViewContainer"]']
               .map(s => document.querySelector(s)).filter(Boolean).map(e => e.scrollTop))"""
    )


def test_a_pharmacists_session_in_chromium(server: dict) -> None:
    """Sign in, claim; a critical finding cannot be passed without a comment (error beside the
    button), it is returned; the next prescription opens from the top (scroll position checked)
    with its countdown; a warning is passed only with a chosen reason; the resubmission shows the
    doctor's change and the patient's history; it is given back. Screenshots at 1440×900."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=20_000)
    SCREENSHOTS.mkdir(exist_ok=True)
    queue = server["queue"]
    for item in server["submitted"]:  # the fixture's three: out of the way (another facility's pharmacist)
        queue.claim(item.id, "someone_else", lease_seconds=3600)
    ids = seed_session(queue)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900}, locale="zh-CN")
            page.set_default_timeout(30_000)
            page.goto(server["url"])
            expect(page.get_by_label("用户名 User name")).to_be_visible()
            assert "P-00001" not in page.content()
            page.screenshot(path=SCREENSHOTS / "01_signin.png", full_page=True)
            page.get_by_label("用户名 User name").fill("yao01")
            page.get_by_label("密码 Password").fill("yao01-demo")
            page.get_by_role("button", name="登录 Sign in").click()

            claim = page.get_by_role("button", name="领取下一张 Claim next")
            expect(claim).to_be_visible()
            pending = page.get_by_test_id("stMetricValue").first
            expect(pending).to_have_text("3")
            page.screenshot(path=SCREENSHOTS / "02_workbench.png", full_page=True)
            # The queue refreshes by itself: a new prescription appears without reloading.
            extra = prescription(9, facility="DSZ")
            queue.submit(extra, result(extra, severity="info"))
            expect(pending).to_have_text("4", timeout=15_000)

            # 1. The critical item: Pass without a comment is refused, the error beside the button.
            claim.click()
            expect(page.get_by_role("heading", name="处方 RX-000101")).to_be_visible()
            main = page.get_by_test_id("stMain")
            choose(page, "通过原因 reason（必选 required）", "A01")
            pass_button = page.get_by_role("button", name="通过 Pass")
            pass_button.click()
            refusal = main.get_by_text("拦截级问题通过须填写备注")
            expect(refusal).to_be_visible()
            # Beside the button: the form's own line right under it.
            under = main.get_by_text("未提交：请补全上方标出的项目")
            expect(under).to_be_visible()
            button_box, under_box = pass_button.bounding_box(), under.bounding_box()
            assert button_box and under_box and 0 <= under_box["y"] - button_box["y"] < 200, (button_box, under_box)
            page.screenshot(path=SCREENSHOTS / "03_critical_refused.png", full_page=True)
            assert queue.get(ids["critical"]).item.status == "claimed"

            # 2. Return it; the next prescription opens from its top.
            choose(page, "退回原因 reason（必选 required）", "R06")
            page.get_by_label("给医生的说明 note to the doctor").fill("eGFR 24，二甲双胍禁用，请换药")
            return_button = page.get_by_role("button", name="退回 Return")
            return_button.scroll_into_view_if_needed()
            assert scroll_top(page) > 100  # the decision forms are below the fold
            return_button.click()
            expect(page.get_by_role("heading", name="处方 RX-000102")).to_be_visible()
            expect(main.get_by_text("已打开下一张")).to_be_visible()
            page.wait_for_function(
                """() => Math.max(window.scrollY, ...['[data-testid="stMain"]', '[data-testid="stAppViewContainer"]']
                     .map(s => document.querySelector(s)).filter(Boolean).map(e => e.scrollTop)) < 5"""
            )
            assert scroll_top(page) < 5
            expect(main.get_by_text("已打开下一张")).to_be_in_viewport()
            expect(page.get_by_role("heading", name="处方 RX-000102")).to_be_in_viewport()
            # 审方时限: the countdown ticks in its frame; the limit and lease beside it.
            timers = [f for f in page.frames if f.locator("[role=timer]").count()]
            assert timers, "no countdown frame"
            expect(timers[0].locator("[role=timer]")).to_contain_text("审方时限剩余")
            expect(main.get_by_text("审方时限 review limit 3分0秒")).to_be_visible()
            expect(main.get_by_text("领取租约至 lease until")).to_be_visible()
            page.screenshot(path=SCREENSHOTS / "04_next_from_top.png")

            # 3. The warning: Pass needs a chosen reason (none preselected), then passes.
            page.get_by_role("button", name="通过 Pass").click()
            expect(main.get_by_text("请选择通过原因")).to_be_visible()
            choose(page, "通过原因 reason（必选 required）", "A01")
            page.get_by_role("button", name="通过 Pass").click()
            expect(page.get_by_role("heading", name="处方 RX-000103")).to_be_visible()

            # 4. The resubmission: the doctor's change and the messages; the patient's history.
            expect(main.get_by_text("医生的修改 what the doctor changed")).to_be_visible()
            expect(main.get_by_text("第1版 → 第2版")).to_be_visible()  # the diff table (a canvas grid) follows
            main.get_by_text("第1版 → 第2版").scroll_into_view_if_needed()
            page.screenshot(path=SCREENSHOTS / "05_resubmission_diff.png")
            main.get_by_text("患者既往处方 patient's earlier prescriptions").click()
            expect(main.get_by_text("选中一行查看该处方")).to_be_visible()
            main.get_by_text("选中一行查看该处方").scroll_into_view_if_needed()
            page.screenshot(path=SCREENSHOTS / "06_patient_history.png")

            # 5. Give it back.
            page.get_by_role("button", name="交回 Give back").click()
            expect(main.get_by_text("已交回队列")).to_be_visible()
            expect(page.get_by_role("button", name="领取下一张 Claim next")).to_be_visible()

            # 6. Any row of the queue opens: the second row (the info item of facility DSZ).
            grid = main.get_by_test_id("stDataFrame").first
            expect(grid).to_be_visible()
            box = grid.bounding_box()
            assert box is not None
            page.mouse.click(box["x"] + 12, box["y"] + 35 + 35 * 1 + 17)  # the selection cell of row 2
            expect(page.get_by_role("heading", name="处方 RX-000009")).to_be_visible()
        finally:
            browser.close()

    critical = queue.get(ids["critical"])
    assert critical.item.status == "returned" and critical.item.reason_code == "R06"
    warning = queue.get(ids["warning"]).item
    assert warning.status == "approved" and warning.decided_by == "yao01" and warning.reason_code == "A01"
    resubmission = queue.get(ids["resubmission"])
    assert resubmission.item.status == "pending" and resubmission.trail[-1].action == "give_back"
    opened = queue.search(prescription_id="RX-000009")[0]
    assert opened.status == "claimed" and queue.get(opened.item_id).item.claimed_by == "yao01"
    log = server["log"].read_text(encoding="utf-8")
    assert "患者姓名不应出现" not in log  # patient names never logged
    assert "Traceback" not in log, log[-3000:]


def test_every_page_renders_in_chromium(server: dict) -> None:
    """Admin tour: each page renders without an error box; a screenshot of each."""
    from playwright.sync_api import expect, sync_playwright

    queue = server["queue"]
    first, second, _ = server["submitted"]  # some decisions, so that the statistics have something to show
    queue.claim(first.id, "yao01")
    queue.approve(first.id, "yao01", "A01", "已核实")
    queue.claim(second.id, "yao02")
    queue.return_to_doctor(second.id, "yao02", "R06", "请换药")

    expect.set_options(timeout=20_000)

    SCREENSHOTS.mkdir(exist_ok=True)
    pages = [
        # (link, text of the page's last element, screenshot)
        ("检索 Search", "检索 Search", "10_search.png"),
        ("统计 Statistics", "有数据的开具日期", "11_statistics.png"),
        ("规则库 Rulebook", "条规则 rules", "12_rulebook.png"),
        ("管理 Admin", "用户文件 users file", "13_admin.png"),
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900}, locale="zh-CN")
            page.set_default_timeout(30_000)
            page.goto(server["url"])
            page.get_by_label("用户名 User name").fill("admin")
            page.get_by_label("密码 Password").fill("admin-demo")
            page.get_by_role("button", name="登录 Sign in").click()
            expect(page.get_by_role("button", name="领取下一张 Claim next")).to_be_visible()
            for link, marker, shot in pages:
                page.get_by_role("link", name=link).click()
                expect(page.get_by_test_id("stMain").get_by_text(marker).first).to_be_visible()
                if link.startswith("规则库"):
                    expect(page.get_by_test_id("stDataFrame").first).to_be_visible()
                page.wait_for_timeout(500)  # let charts and tables paint
                expect(page.get_by_test_id("stException")).to_have_count(0)
                page.screenshot(path=SCREENSHOTS / shot, full_page=True)
            # Sign out: back to the sign-in form, no patient data left on screen.
            page.get_by_role("button", name="退出登录 Sign out").click()
            expect(page.get_by_label("用户名 User name")).to_be_visible()
            assert "P-0000" not in page.content()
        finally:
            browser.close()
    assert "Traceback" not in server["log"].read_text(encoding="utf-8")


def test_his_markdown_payloads_fetch_nothing_and_link_nowhere(server: dict) -> None:
    """An item whose every HIS text field carries markdown image/link/HTML payloads: opening it
    sends no request to the payload host, and the DOM holds no <img>/<a href> from the payload."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=20_000)
    SCREENSHOTS.mkdir(exist_ok=True)
    record = evil_prescription(900, facility="EVL")
    server["queue"].submit(record, evil_result(record))
    requested: list[str] = []

    def watch(route) -> None:
        url = route.request.url
        if EVIL_HOST in url:
            requested.append(url)
            route.abort()
        else:
            route.continue_()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2400}, locale="zh-CN")
            page.set_default_timeout(30_000)
            page.on("request", lambda request: requested.append(request.url) if EVIL_HOST in request.url else None)
            page.route("**/*", watch)
            page.goto(server["url"])
            page.get_by_label("用户名 User name").fill("yao01")
            page.get_by_label("密码 Password").fill("yao01-demo")
            page.get_by_role("button", name="登录 Sign in").click()
            claim = page.get_by_role("button", name="领取下一张 Claim next")
            expect(claim).to_be_visible()
            # Only the payload item's facility, so that it is the one claimed.
            page.get_by_text("筛选 Filters").click()
            facility = page.get_by_label("机构 facility (id, 逗号分隔)")
            facility.fill("EVL")
            facility.press("Enter")
            expect(page.get_by_test_id("stMetricValue").first).to_have_text("1")
            claim.click()
            expect(page.get_by_role("heading", name="处方 RX-EVIL-900")).to_be_visible()
            main = page.get_by_test_id("stMain")
            # The payloads are there, as literal text.
            expect(main.get_by_text("未知药品 ![x](http").first).to_be_visible()
            expect(main.get_by_text("[点此](http").first).to_be_visible()
            expect(main.get_by_text("医生 D1 ![x](http").first).to_be_visible()
            page.screenshot(path=SCREENSHOTS / "20_markdown_payloads_inert.png", full_page=True)
            for selector in (f"img[src*='{EVIL_HOST}']", f"a[href*='{EVIL_HOST}']", f"[src*='{EVIL_HOST}']"):
                assert page.locator(selector).count() == 0, selector
            links = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
            assert not [href for href in links if EVIL_HOST in href], links
        finally:
            browser.close()
    assert requested == [], requested
    assert "Traceback" not in server["log"].read_text(encoding="utf-8")
