#!/bin/sh
# Installs the Debian packages dialguard's tests and `make run` use, when their command is missing.
#
# Why: none of these are Python packages and a fresh machine has none of them, so `make test`
# calls this first. Each argument is COMMAND:PACKAGE; a package is installed only when its
# command is not on PATH (idempotent, and quick when all is there). Without arguments, all of:
#   promtool:prometheus        rule tests, and a real Prometheus scraping a real worker
#   kamailio:kamailio          the SIP switch the switch adapter drives (siptrace, htable, jsonrpcs)
#   sipp:sip-tester            the SIP traffic generator of the end-to-end test
#   tshark:tshark              SIP and ISUP pcap replay
#   chromium:chromium          headless browser of the analyst-console test
#   chromedriver:chromium-driver
# Daemons that package scripts start (prometheus on :9090, kamailio on :5060) are stopped and
# disabled again: tests and `make run` start their own on ports of their choosing.
set -eu

if [ "$#" -eq 0 ]; then
    set -- promtool:prometheus kamailio:kamailio sipp:sip-tester tshark:tshark \
           chromium:chromium chromedriver:chromium-driver
fi

missing=""
for pair in "$@"; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    if ! command -v "$cmd" >/dev/null 2>&1; then
        missing="$missing $pkg"
    fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=sudo
    else
        echo "ensure_debian_packages: missing$missing and not root (no sudo): install them" \
             "by hand (apt-get install$missing)" >&2
        exit 1
    fi
else
    SUDO=
fi

echo "ensure_debian_packages: installing$missing"
export DEBIAN_FRONTEND=noninteractive
# An old or empty package list finds nothing: refresh it once, then install.
$SUDO apt-get update -qq
# shellcheck disable=SC2086  # word splitting of the package list is intended
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null

for daemon in prometheus kamailio; do
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        $SUDO systemctl stop "$daemon" 2>/dev/null || true
        $SUDO systemctl disable "$daemon" 2>/dev/null || true
    elif [ -x "/etc/init.d/$daemon" ]; then
        $SUDO "/etc/init.d/$daemon" stop >/dev/null 2>&1 || true
    fi
done

for pair in "$@"; do
    cmd=${pair%%:*}
    command -v "$cmd" >/dev/null 2>&1 || {
        echo "ensure_debian_packages: '${pair#*:}' installed but '$cmd' is still not on PATH" >&2
        exit 1
    }
done
echo "ensure_debian_packages: all present ($*)"
