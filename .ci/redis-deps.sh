#!/usr/bin/env bash
# The Redis tests' system packages: Debian's redis-server and redis-tools (redis-cli), for the
# real servers that tests/redis_servers.py starts on free loopback ports of its own. Idempotent
# and quiet: does nothing when both are there already, and shows apt's output only when it fails.
# The package's own service is not needed: it is kept from starting during the install where
# nothing else says otherwise (policy-rc.d), and stopped and disabled after it in any case.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
log="$(mktemp)"
policy=""
cleanup() {
    rm -f "$log"
    if [ -n "$policy" ]; then $SUDO rm -f "$policy"; fi
}
trap cleanup EXIT
if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\n# .ci/redis-deps.sh: no service starts while it installs packages\nexit 101\n' \
        | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
fi
if ! { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        redis-server redis-tools; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "redis-deps: could not install redis-server and redis-tools" >&2
    exit 1
fi
# Should the package have started its service on 6379 all the same: stop it, and keep it off.
if [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
else
    $SUDO service redis-server stop >/dev/null 2>&1 || true
    $SUDO update-rc.d redis-server disable >/dev/null 2>&1 || true
fi
command -v redis-server >/dev/null && command -v redis-cli >/dev/null
