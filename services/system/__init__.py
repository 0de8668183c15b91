"""Finds the Debian-packaged programs dialguard drives (Prometheus, Kamailio, SIPp, tshark,
Chromium), installing the missing ones through ``ensure_debian_packages.sh``.

Why one place: ``make test`` runs the script up front, but a bare ``pytest`` or a subcommand
run on a fresh machine needs the same, and a machine where a package cannot be installed must
get a failure that says what to do, never a silent skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ENSURE_SCRIPT = Path(__file__).resolve().with_name("ensure_debian_packages.sh")
#: apt-get update + install of a package and its dependencies.
INSTALL_TIMEOUT_S = 900
#: Command -> the Debian package that ships it.
PACKAGES: dict[str, str] = {
    "promtool": "prometheus", "prometheus": "prometheus", "kamailio": "kamailio",
    "kamcmd": "kamailio", "sipp": "sip-tester", "tshark": "tshark", "chromium": "chromium",
    "chromedriver": "chromium-driver",
}


class ToolMissing(RuntimeError):
    """A program is not installed and could not be installed."""


def system_tool(name: str) -> str:
    """Absolute path of command ``name``; installs its Debian package once if it is missing."""
    found = shutil.which(name)
    if found:
        return found
    package = PACKAGES[name]
    done = subprocess.run(["sh", str(ENSURE_SCRIPT), f"{name}:{package}"], capture_output=True,
                          text=True, timeout=INSTALL_TIMEOUT_S, check=False)
    found = shutil.which(name)
    if found:
        return found
    raise ToolMissing(
        f"`{name}` is not installed and {ENSURE_SCRIPT.name} could not install it "
        f"(exit {done.returncode}): {(done.stderr or done.stdout).strip()[-500:]}\n"
        f"Install Debian's `{package}` package (apt-get install --no-install-recommends "
        f"{package}) or run `sh {ENSURE_SCRIPT.relative_to(ENSURE_SCRIPT.parents[2])}` as root.")
