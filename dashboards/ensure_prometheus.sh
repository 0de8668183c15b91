#!/bin/sh
# Installs Debian's `prometheus` package (which ships `promtool`) if promtool is missing.
#
# Why: the rule tests run `promtool check rules` / `promtool test rules`, and the integration
# test starts a real Prometheus against a real worker. Neither is a Python package, and a fresh
# machine has neither, so `make test` calls this first. Idempotent: does nothing when promtool is
# already on PATH. The package's postinst may start a system-wide Prometheus daemon on :9090;
# the tests start their own on a free loopback port, so a daemon started here is stopped again.
set -eu

PACKAGE=prometheus

if command -v promtool >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=sudo
    else
        echo "ensure_prometheus: promtool missing and not root (no sudo): install the" \
             "Debian package '$PACKAGE' by hand" >&2
        exit 1
    fi
else
    SUDO=
fi

echo "ensure_prometheus: installing Debian package '$PACKAGE' (for promtool and prometheus)"
export DEBIAN_FRONTEND=noninteractive
# An old or empty package list finds nothing: refresh it once, then install.
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "$PACKAGE" >/dev/null

# Stop the daemon the package may have started (systemd unit or SysV script); the tests never
# use it and it would hold port 9090.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl stop "$PACKAGE" 2>/dev/null || true
    $SUDO systemctl disable "$PACKAGE" 2>/dev/null || true
elif [ -x "/etc/init.d/$PACKAGE" ]; then
    $SUDO "/etc/init.d/$PACKAGE" stop >/dev/null 2>&1 || true
fi

command -v promtool >/dev/null 2>&1 || {
    echo "ensure_prometheus: '$PACKAGE' installed but promtool is still not on PATH" >&2
    exit 1
}
echo "ensure_prometheus: $(promtool --version 2>&1 | head -n 1)"
