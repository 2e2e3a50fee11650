#!/usr/bin/env bash
# Install the browser the review UI's end-to-end test drives: Debian's chromium plus a CJK font
# (Chinese text renders as boxes without one). Idempotent: a fast no-op when both are installed;
# `apt-get update` runs only when a package is missing and the package lists are absent or stale.
set -euo pipefail

PACKAGES=(chromium fonts-wqy-zenhei)

missing=()
for package in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if [ "${#missing[@]}" -eq 0 ] && [ -x /usr/bin/chromium ]; then
  echo "browser.sh: chromium and fonts-wqy-zenhei already installed ($(/usr/bin/chromium --version 2>/dev/null || echo chromium))"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

# Refresh the package lists only if they are missing or older than a day.
lists=/var/lib/apt/lists
if [ -z "$(find "$lists" -maxdepth 1 -name '*_Packages*' -mtime -1 -print -quit 2>/dev/null)" ]; then
  echo "browser.sh: apt-get update"
  $SUDO apt-get update -qq
fi

echo "browser.sh: installing ${missing[*]:-chromium}"
if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]:-chromium}"; then
  # Stale lists (a package version gone from the mirror): refresh once and retry.
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]:-chromium}"
fi
/usr/bin/chromium --version
