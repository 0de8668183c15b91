"""Stopping and reading the child processes dialguard starts (worker, API, Kamailio, adapters).

Why one place: every child is started with ``start_new_session=True`` so that its own children
(Faust's threads and forks, Kamailio's worker processes) live in its process group; stopping
it means signalling that group, politely first, and a test that fails wants the end of its log.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Mapping

from services.settings import ENV_PREFIX, REPO_ROOT, Settings

#: Lines of a child's log shown when it failed to start or stop.
LOG_TAIL_LINES = 40


def child_env(settings: Settings, home: Path,
              overrides: Mapping[str, object] | None = None) -> dict[str, str]:
    """Environment of a ``dialguard`` child: this process's without its ``DIALGUARD_*``
    (settings exported in a developer's shell must not leak into a child with its own),
    ``settings``' broker, a ``home`` of its own, then ``overrides`` (setting names without
    the prefix, e.g. ``{"APP_ID": "w1"}``); the repository on ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    values: dict[str, object] = {"KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                                 "TOPIC_PARTITIONS": settings.topic_partitions, "HOME": home,
                                 **(overrides or {})}
    env.update({f"{ENV_PREFIX}{name}": str(value) for name, value in values.items()})
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def stop_group(proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM the process group of ``proc``; SIGKILL it if it has not exited by ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a child's log (or a note that it wrote none)."""
    if not path.exists():
        return f"(no {path.name})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
