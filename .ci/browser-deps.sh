#!/usr/bin/env bash
# The browser test's system packages: Debian's Chromium, its WebDriver, and a font for the
# screenshot (tests/test_console_browser.py). Idempotent and quiet: does nothing when they are
# there already, and shows apt's output only when it fails.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver fonts-liberation; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "browser-deps: could not install chromium and chromium-driver" >&2
    exit 1
fi
command -v chromium >/dev/null && [ -x /usr/bin/chromedriver ]
