#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine and run them:
# the venv with test extras, a PostgreSQL server, Debian's chromium for the browser test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh test
# Installs (if needed) and starts PostgreSQL; prints `export RX_AUDIT_TEST_PG_URL=…`.
eval "$(bash scripts/postgres.sh)"
if [ -f scripts/browser.sh ]; then
  bash scripts/browser.sh
fi
.venv/bin/ruff check rx_audit review_ui tests benchmarks   # incl. mccabe complexity <= 12 in rx_audit
.venv/bin/mypy rx_audit review_ui
.venv/bin/lint-imports                                     # the layer contracts in pyproject.toml
.venv/bin/rx-audit rules check rules
.venv/bin/python -m pytest tests "$@"
