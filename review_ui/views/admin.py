"""管理 Admin — the live rulebook version; check a new one, then hot-swap it in."""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from pathlib import Path

import pandas as pd
import streamlit as st

from review_ui import backend, ui
from review_ui.auth import ROLE_LABELS
from rx_audit.errors import RulebookError, RulebookErrors

log = logging.getLogger("rx_audit.review_ui.admin")

user = backend.require_admin()
settings = backend.settings_or_stop()
auditor = backend.auditor(settings)


@st.cache_resource
def reload_history() -> tuple[threading.Lock, list[dict[str, str]]]:
    """Process-wide record of rulebook swaps done from this UI (also in the server log)."""
    return threading.Lock(), []


def check_rulebook(path: str) -> dict:
    """Load, compile and run the examples of a rulebook without touching the live one."""
    from rx_audit.engine import Auditor
    from rx_audit.examples import run_examples
    from rx_audit.rulebook import load_rulebook

    try:
        rulebook = load_rulebook(path)
    except RulebookErrors as error:
        return {"ok": False, "errors": [str(e) for e in error.errors]}
    except RulebookError as error:
        return {"ok": False, "errors": [str(error)]}
    candidate = Auditor(rulebook)
    try:
        outcomes = run_examples(candidate)
    finally:
        candidate.close()
    failed = [o for o in outcomes if not o.passed]
    return {
        "ok": not failed,
        "errors": [],
        "hash": rulebook.hash,
        "drugs": len(rulebook.drugs),
        "rules": len(rulebook.rules_by_id()),
        "warnings": list(rulebook.warnings),
        "examples": len(outcomes),
        "failed": [
            f"{o.example.source} {o.example.name}: "
            + (o.error or f"缺少 missing {o.missing} 多余 unexpected {o.unexpected}")
            for o in failed
        ],
    }


st.title("⚙️ 管理 Admin")

live = auditor.rulebook
st.subheader("在用规则库 Live rulebook")
c1, c2, c3 = st.columns(3)
c1.metric("药品 drugs", len(live.drugs))
c2.metric("规则 rules", len(live.rules_by_id()))
c3.metric("目录 folder", Path(str(live.root)).name or str(live.root))
st.code(auditor.rulebook_hash, language=None)
st.caption(f"路径 path `{live.root}` · 配置 configured `{settings.rules}` ({settings.sources.get('rules', '')})")

st.subheader("加载新版本 Load a new rulebook version")
st.caption(
    "先检查（校验每个文件并运行规则文件中的示例），通过后再启用；启用时引擎热切换，正在进行的审核用旧版本完成。"
    " Check first (validate every file, run the examples), then activate: the engine swaps it in."
)
path = st.text_input(
    "规则库目录 rulebook folder (服务器上的路径 path on the server)", value=str(live.root), key="admin_rules_path"
)
if st.button("检查 Check", key="admin_check", icon="🔍"):
    with st.spinner("检查中 checking…"):
        st.session_state["admin_report"] = {"path": path, **check_rulebook(path)}

report = st.session_state.get("admin_report")
if report and report["path"] == path:
    if report["errors"]:
        st.error(f"规则库有 {len(report['errors'])} 处错误，不能启用 (errors; cannot activate):")
        st.code("\n".join(report["errors"]), language=None)
    else:
        same = report["hash"] == auditor.rulebook_hash
        summary = (
            f"`{report['hash']}` · {report['drugs']} 药品 drugs · {report['rules']} 规则 rules · "
            f"{report['examples']} 示例 examples"
        )
        if report["failed"]:
            st.warning(f"规则可加载，但 {len(report['failed'])} 个示例未通过 (examples failing): {summary}")
            st.code("\n".join(report["failed"]), language=None)
        else:
            st.success(f"检查通过 check passed: {summary}" + (" — 与在用版本相同 (same as live)" if same else ""))
        for warning in report["warnings"]:
            st.caption(f"⚠️ {warning}")
        force = True
        if report["failed"]:
            force = st.checkbox("仍然启用（示例未通过）activate anyway", key="admin_force")
        if st.button("启用此版本 Activate", type="primary", key="admin_activate", disabled=not force or same):
            previous = auditor.rulebook_hash
            try:
                new_hash = auditor.reload(path)
            except RulebookError as error:
                st.error(f"启用失败，在用版本未变 (activation failed; live version unchanged): {error}")
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
                st.toast(f"已启用 activated {new_hash[:19]}…", icon="✅")
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
queue = backend.queue(settings)
st.caption(f"数据库 database `{settings.redacted_db_url()}` ({settings.sources.get('db_url', '')})")
counts = {"pending": queue.count(status=list(ui.READY_STATUSES))}
counts.update({status: queue.count(status=status) for status in ("claimed", "approved", "returned", "auto_passed")})
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
