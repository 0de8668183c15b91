"""Finds Prometheus's binaries (`promtool`, `prometheus`) for the tests, installing them if needed.

Why here: both the rule tests and the integration test need the Debian package `prometheus`,
which a fresh machine lacks. ``make test`` runs ``ensure_prometheus.sh`` first; a bare
``pytest`` gets the same by calling it through :func:`prometheus_tool`, and a machine where it
cannot be installed gets a failure that says what to do, never a silent skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ENSURE_SCRIPT = Path(__file__).resolve().with_name("ensure_prometheus.sh")
#: apt-get update + install of one package and its few dependencies.
INSTALL_TIMEOUT_S = 600


class ToolMissing(RuntimeError):
    """A Prometheus binary is not installed and could not be installed."""


def prometheus_tool(name: str) -> str:
    """Absolute path of ``name`` (``promtool`` or ``prometheus``); installs the package once."""
    found = shutil.which(name)
    if found:
        return found
    done = subprocess.run(["sh", str(ENSURE_SCRIPT)], capture_output=True, text=True,
                          timeout=INSTALL_TIMEOUT_S, check=False)
    found = shutil.which(name)
    if found:
        return found
    raise ToolMissing(
        f"`{name}` is not installed and {ENSURE_SCRIPT.name} could not install it "
        f"(exit {done.returncode}): {(done.stderr or done.stdout).strip()[-500:]}\n"
        f"Install Debian's `prometheus` package (apt-get install --no-install-recommends "
        f"prometheus) or run `sh dashboards/ensure_prometheus.sh` as root.")
