"""Test tooling for the dashboards: Prometheus's binaries and a PromQL name extractor.

:func:`prometheus_tool` is a thin name for :func:`services.system.system_tool`, which installs
Debian's `prometheus` package when it is missing (``make test`` does that up front for every
package). :func:`selected_names` is shared by the unit and the real-Prometheus tests, which
split expressions by the process whose metrics they read.
"""

from __future__ import annotations

from services.system import ToolMissing, system_tool

__all__ = ["ToolMissing", "prometheus_tool", "selected_names"]


def prometheus_tool(name: str) -> str:
    """Absolute path of ``name`` (``promtool`` or ``prometheus``); installs the package once."""
    return system_tool(name)


def selected_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects, from a real parse (raises on bad syntax).

    ``promql-parser`` is a test dependency, hence imported here, not at module level.
    """
    import promql_parser

    names: set[str] = set()

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            names.update(m.value for m in node.matchers.matchers if m.name == "__name__")
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names
