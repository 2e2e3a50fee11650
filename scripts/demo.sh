#!/usr/bin/env bash
# Set up and run the demo: check and test the shipped rulebook, audit the sample prescriptions,
# replay them into the demo review queue (var/demo.db) that `streamlit run review_ui` opens, and
# print the queue's statistics. Every step runs every time; any failure stops the demo with its
# exit status (set -e), and the step that failed is named.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }
trap 'status=$?; echo "demo.sh: failed (exit $status) at: $BASH_COMMAND" >&2' ERR

step "安装 setup (.venv with the ui extra: the queue, replay and the review UI)"
log="$(mktemp)"
if ! bash scripts/setup.sh ui >"$log" 2>&1; then
  cat "$log" >&2
  rm -f "$log"
  exit 1
fi
rm -f "$log"
.venv/bin/python -c "import sqlalchemy, sqlmodel, alembic, streamlit" # the extras the demo needs
.venv/bin/rx-audit --version

step "规则库校验 rules check"
.venv/bin/rx-audit rules check rules
step "规则库试审 rules test"
.venv/bin/rx-audit rules test rules
step "审方 audit examples/prescriptions.jsonl"
.venv/bin/rx-audit audit examples/prescriptions.jsonl --format table

step "审方队列 queue migrate + replay into var/demo.db"
mkdir -p var
db="sqlite:///var/demo.db"
.venv/bin/rx-audit queue migrate --db "$db"  # schema first (also upgrades an older demo.db)
.venv/bin/rx-audit replay examples/prescriptions.jsonl --db "$db" --report var/demo-report.html
step "队列统计 queue stats"
.venv/bin/rx-audit queue stats --db "$db"

step "审方工作台 review UI (demo users and passwords in review_ui/users.demo.toml)"
echo "  RX_AUDIT_DB_URL=$db RX_AUDIT_USERS=review_ui/users.demo.toml .venv/bin/streamlit run review_ui"
echo "  replay report: var/demo-report.html"
