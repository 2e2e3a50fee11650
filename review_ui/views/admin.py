"""管理 Admin — the live rulebook version; check a new one, then hot-swap it in."""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from pathlib import Path

import pandas as pd
import streamlit as st

from review_ui import backend, catalog, rulebook_check, ui
from review_ui.auth import ROLE_LABELS
from rx_audit import RulebookError

log = logging.getLogger("rx_audit.review_ui.admin")

user = backend.require_admin()
settings = backend.settings_or_stop()
auditor = backend.auditor(settings)


@st.cache_resource
def reload_history() -> tuple[threading.Lock, list[dict[str, str]]]:
    """Process-wide record of rulebook swaps done from this UI (also in the server log)."""
    return threading.Lock(), []


st.title(f"{ui.ICONS['admin']} 管理 Admin")

live = auditor.rulebook  # read once: its hash and its contents belong together
st.subheader("在用规则库 Live rulebook")
c1, c2, c3, c4 = st.columns(4)
c1.metric("药品 drugs", f"{len(catalog.drugs(live)):,}")
c2.metric("有专论 monographs", f"{sum(1 for drug in catalog.drugs(live) if drug.monograph):,}")
c3.metric("规则 rules", f"{len(catalog.rules(live)):,}")
c4.metric("目录 folder", Path(str(live.root)).name or str(live.root))
st.code(live.hash, language=None)
st.caption(f"路径 path `{live.root}` · 配置 configured `{settings.rules}` ({settings.sources.get('rules', '')})")

st.subheader("加载新版本 Load a new rulebook version")
st.caption(
    "先检查（校验每个文件并运行规则文件中的示例，在独立进程中限时运行），通过后才能启用；启用时引擎热切换，"
    "正在进行的审核用旧版本完成。 Check first (validate every file, run the examples — in a separate process, "
    "time-limited); only a rulebook that passed can be activated: the engine swaps it in."
)
path = st.text_input(
    "规则库目录 rulebook folder (服务器上的路径 path on the server)", value=str(live.root), key="admin_rules_path"
)
if st.button("检查 Check", key="admin_check", icon=ui.ICONS["check"]):
    # Out of the server process with a time limit (see review_ui/rulebook_check.py): a rulebook
    # that never finishes loading can no longer freeze the server for everyone.
    with st.spinner(f"检查中 checking… (最长 at most {settings.check_timeout_seconds:g} 秒 s)"):
        st.session_state["admin_report"] = rulebook_check.check(path, timeout=settings.check_timeout_seconds)
    log.info("rulebook check by=%s path=%s", user.id, path)

report: rulebook_check.CheckReport | None = st.session_state.get("admin_report")
if report is not None and report.path == path:
    if report.timed_out:
        st.error(
            f"检查超时（{report.timeout_seconds:g} 秒），规则库不能启用 (check timed out after "
            f"{report.timeout_seconds:g} s; this rulebook cannot be activated)."
        )
    elif report.fingerprint is None:
        st.error("不是规则库目录或目录过大，不能启用 (not a rulebook folder, or too big; cannot activate).")
    elif report.result is None:
        st.error("检查未完成（检查进程没有给出结果），不能启用 (the check did not finish: no report from the "
                 "check process; this rulebook cannot be activated).")
    elif not report.ok:
        found = report.result
        st.error(
            f"检查未通过（规则库有 {len(found.errors)} 个错误，{len(found.examples_failed)} 个示例未通过），不能启用 "
            f"(check failed: {len(found.errors)} errors, {len(found.examples_failed)} failing examples; "
            "this rulebook cannot be activated)."
        )
    if report.result is not None and not report.result.errors:
        found = report.result
        m1, m2, m3, m4 = st.columns(4)
        m1.metric("药品 drugs", f"{found.drugs:,}")
        m2.metric("规则 rules", f"{found.rules:,}")
        m3.metric("示例通过 examples passed", f"{found.examples_passed:,}")
        m4.metric("示例未通过 examples failed", f"{len(found.examples_failed):,}")
    for run in report.runs:
        exit_note = f" → exit {run.returncode}" if run.returncode is not None else ""
        st.caption("rx_audit.check_rulebook " + ui.md(Path(report.path).name or report.path) + exit_note)
        if run.error:
            st.code(run.error, language=None)
        st.code(run.output.strip() or "(无输出 no output)", language=None)  # plain text, never Markdown
    if report.ok:
        same = report.hash == live.hash
        st.success(
            f"检查通过 check passed: {ui.md(report.hash or '?')}"
            + (" — 与在用版本相同 (same as live)" if same else "")
        )
        if st.button("启用此版本 Activate", type="primary", key="admin_activate", disabled=same):
            previous = live.hash
            if rulebook_check.fingerprint(path) != report.fingerprint:
                # Only content that was checked may be loaded in this process.
                st.session_state.pop("admin_report", None)
                st.error("目录在检查后已改变，请重新检查 (the folder changed since the check; check it again).")
                st.stop()
            try:
                new_hash = auditor.reload(path)
            except RulebookError as error:
                st.error(f"启用失败，在用版本未变 (activation failed; live version unchanged): {ui.md(error)}")
            else:
                lock, history = reload_history()
                with lock:
                    history.append(
                        {
                            "time": datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
                            "by": user.id,
                            "path": path,
                            "from": previous,
                            "to": new_hash,
                        }
                    )
                log.info("rulebook reload by=%s path=%s from=%s to=%s", user.id, path, previous, new_hash)
                st.session_state.pop("admin_report", None)
                st.toast(f"已启用 activated {ui.md(new_hash[:19])}…", icon=ui.ICONS["done"])
                st.rerun()
        if Path(path).resolve() != Path(settings.rules).resolve():
            st.caption(
                "注意：重启后仍使用配置的目录；要长期使用新目录，请修改 RX_AUDIT_RULES 或配置文件。"
                " (After a restart the configured folder is used; update RX_AUDIT_RULES to keep it.)"
            )

lock, history = reload_history()
with lock:
    rows = list(reversed(history))
if rows:
    st.subheader("切换记录 Reload history (this server process)")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

st.subheader("审方队列 Review queue")
service = backend.service(settings, user)  # an admin's scope is every facility
st.caption(f"数据库 database `{settings.redacted_db_url()}` ({settings.sources.get('db_url', '')})")
counts = {"pending": service.count(status=list(ui.READY))}
counts.update({status: service.count(status=status) for status in ui.NOT_READY})
cols = st.columns(len(counts))
for col, (status, value) in zip(cols, counts.items(), strict=True):
    col.metric(ui.status_label(status), f"{value:,}")

st.subheader("用户 Users")
records = backend.users_or_none(settings)
if records:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "id": r.user.id,
                    "姓名 name": r.user.name,
                    "角色 role": ROLE_LABELS.get(r.user.role, r.user.role),
                    "机构 facilities": ", ".join(r.user.facilities) or "全部 all",
                    "email": r.user.email or "",
                }
                for r in records.values()
            ]
        ),
        hide_index=True,
        width="stretch",
    )
    st.caption(f"用户文件 users file `{settings.users}`；修改后一分钟内生效 (changes apply within a minute).")
else:
    st.caption("未配置用户文件 (no users file); 仅 st.login。")
