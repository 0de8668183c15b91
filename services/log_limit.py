"""Rate-limited logging: one line per key per interval, with how many were held back.

Why: a fault that repeats per record or per connection (an accept loop out of file
descriptors, a dead-letter topic refusing every record, thousands of idle connections) must not
turn into a log that fills the disk and starves the process it describes (the HEP collector
once wrote 152 MB of log in 87 s). The first line of each kind is logged at once; the rest are
counted (metrics carry the exact figures) and summed up in the next line logged for that key.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

#: Default interval between two lines of one key.
DEFAULT_EVERY_S = 60.0
#: Keys remembered at most (keys are meant to be bounded reasons; this guards against a caller
#: that passes something unbounded by mistake).
MAX_KEYS = 1024


class LogLimiter:
    """Logs through ``logger`` at most once per ``every_s`` seconds per key."""

    def __init__(self, logger: logging.Logger, every_s: float = DEFAULT_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        #: key -> (when its last line was logged, lines held back since).
        self._state: dict[str, tuple[float, int]] = {}

    def allow(self, key: str) -> int | None:
        """Whether a line of ``key`` may be logged now: None if not (it is counted as held
        back), else how many lines of ``key`` were held back since the last one."""
        now = self.clock()
        last = self._state.get(key)
        if last is not None and now - last[0] < self.every_s:
            self._state[key] = (last[0], last[1] + 1)
            return None
        if last is None and len(self._state) >= MAX_KEYS:
            self._state.clear()
        self._state[key] = (now, 0)
        return last[1] if last is not None else 0

    def log(self, level: int, key: str, msg: str, *args: Any, exc_info: Any = None) -> bool:
        """Log ``msg % args`` unless a line of ``key`` was logged less than ``every_s`` ago;
        returns whether it was logged."""
        held = self.allow(key)
        if held is None:
            return False
        self.logger.log(level, msg + self.held_note(held), *args, exc_info=exc_info)
        return True

    def held_note(self, held: int) -> str:
        """What to append to a line after ``held`` were held back (empty when none were)."""
        return f" (and {held} more like it within {self.every_s:.0f}s)" if held else ""

    def warning(self, key: str, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: Any) -> bool:
        return self.log(logging.ERROR, key, msg, *args)

    def info(self, key: str, msg: str, *args: Any) -> bool:
        return self.log(logging.INFO, key, msg, *args)
