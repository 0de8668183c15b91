"""Finds Prometheus's binaries (`promtool`, `prometheus`) for the tests, installing them if needed.

A thin name for :func:`services.system.system_tool`, which installs Debian's `prometheus`
package when it is missing (``make test`` does that up front for every package).
"""

from __future__ import annotations

from services.system import ToolMissing, system_tool

__all__ = ["ToolMissing", "prometheus_tool"]


def prometheus_tool(name: str) -> str:
    """Absolute path of ``name`` (``promtool`` or ``prometheus``); installs the package once."""
    return system_tool(name)
