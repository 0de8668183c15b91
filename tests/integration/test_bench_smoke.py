"""``dialguard bench`` end to end on a small load: every figure is printed with a number.

Behaviour only, never timings: the figures depend on the machine. The bench starts (and stops)
a broker of its own, so this test does not use the session broker.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from services import bench
from services.cli import build_parser
from services.settings import REPO_ROOT, Settings

pytestmark = pytest.mark.integration
SMOKE_ARGS = ["--events", "20000", "--callers", "20000", "--seconds", "5"]
TIMEOUT_S = 300.0


def cli_has_bench() -> bool:
    """Whether ``services.cli`` already wires the ``bench`` subcommand."""
    try:
        build_parser().parse_args(["bench", "--help"])
    except SystemExit as exc:
        return exc.code == 0
    return True


def run_bench(capsys: pytest.CaptureFixture[str]) -> str:
    if cli_has_bench():
        proc = subprocess.run([sys.executable, "-m", "services.cli", "bench", *SMOKE_ARGS],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S,
                              check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args: argparse.Namespace = parser.parse_args(SMOKE_ARGS)
    assert bench.run(args, Settings.from_env()) == 0
    return capsys.readouterr().out


def figure_line(report: str, label: str) -> str:
    """The rest of the report line that starts with ``label``."""
    for line in report.splitlines():
        if line.startswith(label):
            return line[len(label):]
    raise AssertionError(f"no line for {label!r} in:\n{report}")


def test_bench_prints_every_figure_with_a_number(capsys):
    report = run_bench(capsys)
    for label in bench.FIGURE_LABELS:
        rest = figure_line(report, label)
        assert "n/a" not in rest, f"{label!r} has no figure:\n{report}"
        assert re.search(r"\d", rest), f"{label!r} has no number:\n{report}"
    runs = [int(n.replace(",", "")) for n in
            figure_line(report, bench.LABEL_DECISIONS).split("/")]
    assert len(runs) == bench.LATENCY_RUNS and sum(runs) > 0, report  # robots decided on
    assert "20,000 distinct callers" in report
    for target in (">= 30,000 events/s", ">= 20 %", "<= 100.0 ms in each", "<= 1,024 B"):
        assert target in report
