"""rx_audit review UI — ``streamlit run review_ui`` (this file is the entry point).

Signed out, only the sign-in page exists: no page that could show patient data is even
registered with ``st.navigation``. Signed in, pharmacists get 审方工作台 / 检索 / 统计 / 规则库;
admins also get 管理.

``review_ui`` is a package of the ``rx-audit`` distribution (``pip install 'rx-audit[ui]'``, or
``pip install -e '.[test]'`` in a checkout): the pages import it like any installed package.
"""

from __future__ import annotations

import logging

import streamlit as st

from review_ui import auth, backend, ui
from review_ui.auth import ROLE_LABELS

logging.getLogger("rx_audit").setLevel(logging.INFO)

st.set_page_config(page_title="处方审核 rx_audit", page_icon=ui.ICONS["workbench"], layout="wide")

settings = backend.settings_or_stop()
ui.set_timezone(settings.timezone)  # every time on every page in the facility's zone
user = backend.signed_in_user(settings)

if user is None:
    navigation = st.navigation(
        [st.Page("views/signin.py", title="登录 Sign in", icon=ui.ICONS["signin"], url_path="signin", default=True)],
        position="hidden",
    )
    navigation.run()
    st.stop()

pages = [
    st.Page("views/workbench.py", title="审方工作台 Workbench", icon=ui.ICONS["workbench"], url_path="workbench",
            default=True),
    st.Page("views/search.py", title="检索 Search", icon=ui.ICONS["search"], url_path="search"),
    st.Page("views/statistics.py", title="统计 Statistics", icon=ui.ICONS["statistics"], url_path="statistics"),
    st.Page("views/rulebook.py", title="规则库 Rulebook", icon=ui.ICONS["rulebook"], url_path="rulebook"),
]
if user.is_admin:
    pages.append(st.Page("views/admin.py", title="管理 Admin", icon=ui.ICONS["admin"], url_path="admin"))

with st.sidebar:
    # Names can come from an SSO identity provider: outside text, escaped like HIS text.
    st.markdown(f"**{ui.md(user.name)}**  \n{ui.md(user.id)} · {ROLE_LABELS.get(user.role, user.role)}")
    if user.facilities:
        st.caption("负责机构 facilities: " + ui.md(", ".join(user.facilities)))
    if st.button("退出登录 Sign out", key="sign_out", icon=ui.ICONS["signout"]):
        auth.sign_out()
        st.rerun()

st.navigation(pages).run()
