"""登录 Sign in — the only page a signed-out visitor can reach. Shows no patient data."""

from __future__ import annotations

import streamlit as st

from review_ui import auth, backend, ui

settings = backend.settings_or_stop()

st.title(f"{ui.ICONS['workbench']} 处方审核 Prescription review")
st.caption("rx_audit · 县域医共体处方前置审核 · 请登录 (please sign in)")

if st.session_state.pop("rx_signed_out_idle", False):
    st.info("长时间未操作，已自动退出 (signed out after inactivity).")

oidc = auth.oidc_configured()
if oidc:
    if not auth.authlib_installed():
        st.warning("已配置单点登录但未安装 Authlib (SSO configured but Authlib is not installed): pip install Authlib")
    elif st.button("使用单位账号登录 Sign in with SSO", type="primary", icon=ui.ICONS["key"], key="oidc_login"):
        st.login()
    refused = st.session_state.get("rx_oidc_refused")
    if refused:
        st.error(f"账号 {ui.md(refused)} 未授权使用审方系统 (this identity has no role). 请联系药剂科管理员。")
        if st.button("换一个账号 Use another account", key="oidc_logout"):
            st.session_state.pop("rx_oidc_refused", None)
            st.logout()

records = backend.users_or_none(settings)
if records is None and not oidc:
    st.error(
        "未配置用户 (no users configured). 设置 RX_AUDIT_USERS 指向用户文件，例如演示用 "
        "`RX_AUDIT_USERS=review_ui/users.demo.toml`，或在 .streamlit/secrets.toml 配置 [auth] (st.login)。"
    )
    st.stop()

if records is not None:
    if oidc:
        st.divider()
        st.caption("或使用本地账号 (or a local account)")
    with st.form("signin", clear_on_submit=False):
        username = st.text_input("用户名 User name", key="signin_user", autocomplete="username")
        password = st.text_input(
            "密码 Password", type="password", key="signin_password", autocomplete="current-password"
        )
        submitted = st.form_submit_button("登录 Sign in", type="primary")
    if submitted:
        username = (username or "").strip()
        # Throttled per user name *and* client address, atomically (see auth._Throttle).
        outcome = auth.sign_in(records, username, password or "", auth.client_address(settings.trusted_proxies))
        if outcome.wait_seconds > 0:
            st.error(f"尝试次数过多，请 {int(outcome.wait_seconds) + 1} 秒后再试 (too many attempts; wait).")
        elif outcome.user is None:
            st.error("用户名或密码错误 (wrong user name or password).")
        else:
            auth.set_user(outcome.user)
            st.rerun()
