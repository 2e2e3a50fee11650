#!/usr/bin/env bash
# Set up and run the demo: check the shipped rulebook, audit the sample prescriptions, replay
# them into the demo review queue (var/demo.db) that `streamlit run review_ui` opens.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
.venv/bin/rx-audit rules check rules
.venv/bin/rx-audit rules test rules
.venv/bin/rx-audit audit examples/prescriptions.jsonl --format table
if .venv/bin/rx-audit --help | grep -q replay; then
  mkdir -p var
  .venv/bin/rx-audit queue migrate --db sqlite:///var/demo.db  # schema first (also upgrades an older demo.db)
  .venv/bin/rx-audit replay examples/prescriptions.jsonl --db sqlite:///var/demo.db --report var/demo-report.html
  .venv/bin/rx-audit queue stats --db sqlite:///var/demo.db
  echo
  echo "审方工作台 (demo users and passwords in review_ui/users.demo.toml):"
  echo "  RX_AUDIT_DB_URL=sqlite:///var/demo.db RX_AUDIT_USERS=review_ui/users.demo.toml .venv/bin/streamlit run review_ui"
fi
