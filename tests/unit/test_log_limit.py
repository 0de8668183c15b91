"""The rate-limited log helper: one line per key per interval, the rest counted."""

from __future__ import annotations

import logging

from services.log_limit import LogLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_key_per_interval_then_a_line_with_what_was_held_back(caplog):
    clock = Clock()
    limiter = LogLimiter(logging.getLogger("test.limit"), every_s=60, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.limit"):
        assert limiter.warning("emfile", "accept failed: %s", "EMFILE")
        assert not any(limiter.warning("emfile", "accept failed: %s", "EMFILE")
                       for _ in range(10_000))
        assert limiter.info("other", "another kind")  # keys are independent
        clock.now += 60
        assert limiter.warning("emfile", "accept failed: %s", "EMFILE")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["accept failed: EMFILE", "another kind",
                     "accept failed: EMFILE (and 10000 more like it within 60s)"]


def test_allow_says_how_many_were_held_back():
    clock = Clock()
    limiter = LogLimiter(logging.getLogger("test.limit"), every_s=5, clock=clock)
    assert limiter.allow("k") == 0
    assert limiter.allow("k") is None and limiter.allow("k") is None
    clock.now += 5
    assert limiter.allow("k") == 2
