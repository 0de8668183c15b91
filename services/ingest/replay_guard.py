"""Replaying a capture twice must not count its calls twice: event ids already published.

Each event gets a stable id from what identifies it in the network, ``switch | call_id | kind
| ts`` (a 64-bit BLAKE2b digest), and file-based ingest (``sip-pcap``, ``isup-pcap``,
``isup-json``, ``cdr``) skips an event whose id this host already published while
``signaling.events`` still holds it (its retention). Why at the producer and not the worker:
the worker would have to remember every event id of every number and source (far beyond the
one-position-per-state it keeps for exact recovery), while a replay is an operator's act on one
host. The ids live in a SQLite file under ``DIALGUARD_HOME`` (safe for several ingest processes
at once) and are committed only once the broker acknowledged the events, so a failed run can be
replayed in full. ``--again`` publishes anyway. The live HEP collector is not guarded: live
traffic is not replayed.
"""

from __future__ import annotations

import argparse
import hashlib
import sqlite3
import struct
import time
from pathlib import Path

from streams.schema import SignalingEvent
from streams.topics import SIGNALING_EVENTS

#: The file under the ingest folder of DIALGUARD_HOME.
DB_NAME = "published-events.sqlite"
#: Ids are forgotten when signaling.events has dropped their events anyway.
RETENTION_S = SIGNALING_EVENTS.retention_ms / 1000.0
#: Wait this long for another ingest process's write lock.
LOCK_TIMEOUT_S = 30.0
WHY_REPLAYED = "already_published"


def event_id(ev: SignalingEvent) -> int:
    """Stable 64-bit id of an event (signed, as SQLite integers are).

    >>> from streams.schema import SignalingEvent
    >>> a = SignalingEvent(1.5, "sip", "attempt", "c1", "8613800138000", "8613900139000",
    ...                    switch="sw1")
    >>> event_id(a) == event_id(SignalingEvent(1.5, "sip", "attempt", "c1", "x", "y",
    ...                                        switch="sw1"))
    True
    >>> event_id(a) == event_id(SignalingEvent(1.5, "sip", "answer", "c1", "x", "y",
    ...                                        switch="sw1"))
    False
    """
    text = f"{ev.switch or ''}|{ev.call_id}|{ev.kind}|{ev.ts:.6f}".encode()
    return struct.unpack("<q", hashlib.blake2b(text, digest_size=8).digest())[0]


class PublishedEvents:
    """The ids this host published, in one transaction per ingest run."""

    def __init__(self, path: Path, retention_s: float = RETENTION_S,
                 now: float | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.now = time.time() if now is None else now
        self.db = sqlite3.connect(path, timeout=LOCK_TIMEOUT_S, isolation_level=None)
        self.db.execute("CREATE TABLE IF NOT EXISTS published "
                        "(id INTEGER PRIMARY KEY, at REAL NOT NULL)")
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("DELETE FROM published WHERE at < ?", (self.now - retention_s,))
        self.skipped = 0

    def first_time(self, ev: SignalingEvent) -> bool:
        """True if this event was not published before (and remembers it); False: skip it."""
        cur = self.db.execute("INSERT OR IGNORE INTO published (id, at) VALUES (?, ?)",
                              (event_id(ev), self.now))
        if cur.rowcount == 0:
            self.skipped += 1
            return False
        return True

    def commit(self) -> None:
        """The broker has every event: remember them."""
        self.db.execute("COMMIT")
        self.db.close()

    def forget(self) -> None:
        """The run failed: a replay must publish them again."""
        self.db.execute("ROLLBACK")
        self.db.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--again", action="store_true",
                        help="publish events this host already published from an earlier "
                             "replay (by default they are skipped and counted as "
                             f"'{WHY_REPLAYED}', so a capture replayed twice counts once)")
