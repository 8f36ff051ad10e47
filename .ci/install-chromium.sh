#!/usr/bin/env bash
# Debian's chromium for the browser test tier (tests/browser: the web console driven by
# Playwright with executable_path=/usr/bin/chromium; no `playwright install`).
# Idempotent and quiet: nothing is done when /usr/bin/chromium is already there.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

if [ ! -x /usr/bin/chromium ]; then
  log="$(mktemp)"
  if ! { apt-get update -qq -o DPkg::Lock::Timeout=600 && apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends chromium; } \
    >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
  fi
  rm -f "$log"
fi
/usr/bin/chromium --version >/dev/null 2>&1 || { echo "/usr/bin/chromium does not start" >&2; exit 1; }
