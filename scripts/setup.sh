#!/usr/bin/env bash
# Create .venv with a Python durable_rules can run on (3.11 or 3.12) and install rx_audit into it.
# Usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python=""
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)' 2>/dev/null; then
      python="$candidate"
      break
    fi
  done
  if [ -z "$python" ]; then
    echo "setup.sh: need Python 3.11 or 3.12 (durable_rules does not import on 3.13)" >&2
    exit 1
  fi
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
target="."
if [ -n "$extras" ]; then target=".[$extras]"; fi
# pip's and setuptools' notices go to a log that is shown only when the install fails.
log=.venv/setup-install.log
if ! .venv/bin/python -m pip install --quiet -e "$target" >"$log" 2>&1; then
  cat "$log" >&2
  echo "setup.sh: pip install -e '$target' failed (log above)" >&2
  exit 1
fi
.venv/bin/python -c "import durable.lang, rx_audit" || { echo "setup.sh: install failed" >&2; exit 1; }
