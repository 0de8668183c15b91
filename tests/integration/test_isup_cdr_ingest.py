"""`dialguard ingest isup-pcap | isup-json | cdr` against the session's real Kafka broker.

Each test notes where signaling.events and the DLQ end before it runs the command, so it
reads exactly what its command produced, then checks the events (key = caller, valid for the
worker's own validator) and the dead letters (original bytes, reason and source headers).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from services.admin import watermarks
from services.settings import REPO_ROOT, Settings
from streams.schema import DLQ_HEADER_DETAIL, DLQ_HEADER_REASON, DLQ_HEADER_SOURCE, EventValidator
from streams.topics import SIGNALING_DLQ, SIGNALING_EVENTS
from tests.integration.worker_harness import events_in

pytestmark = pytest.mark.integration

FIXTURES = REPO_ROOT / "tests" / "fixtures"
T0 = 1_795_420_800.0
CLI_TIMEOUT_S = 120
READ_TIMEOUT_S = 60
METADATA_TIMEOUT_S = 10


class Since:
    """Reads what is appended to a topic after construction (all partitions)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = Consumer({**settings.kafka_client_config(),
                                  "group.id": f"test-{uuid.uuid4().hex[:8]}",
                                  "enable.auto.commit": False})
        parts = self.consumer.list_topics(topic, timeout=METADATA_TIMEOUT_S).topics[topic]
        self.start = []
        for p in sorted(parts.partitions):
            tp = TopicPartition(topic, p)
            tp.offset = self._end(tp)
            self.start.append(tp)
        self.consumer.assign(self.start)
        self.messages: list = []

    def _end(self, tp: TopicPartition) -> int:
        return watermarks(self.consumer, tp)[1]

    def read(self, count: int, timeout: float = READ_TIMEOUT_S, quiet_s: float = 2.0,
             size=len) -> list:
        """Until ``count`` items came (``size`` of the messages: how many records, or events
        for batch records) and nothing more for ``quiet_s`` (so extras show)."""
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            fresh = [m for m in self.consumer.consume(500, timeout=0.5) if not m.error()]
            if fresh:
                self.messages.extend(fresh)
                last = time.monotonic()
            elif size(self.messages) >= count and time.monotonic() - last >= quiet_s:
                break
        return self.messages

    def close(self) -> None:
        self.consumer.close()


def run_cli(settings: Settings, *args: str, stdin: bytes | None = None,
            home: Path | None = None) -> subprocess.CompletedProcess:
    """``dialguard ingest ...``; each run has a home of its own unless ``home`` is given (the
    ids of published events live there: tests replaying one fixture must not share it)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")},
           "DIALGUARD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "DIALGUARD_HOME": str(home or tempfile.mkdtemp(prefix="dg-ingest-")),
           "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "services.cli", "ingest", *args], env=env,
                          cwd=REPO_ROOT, input=stdin, capture_output=True,
                          timeout=CLI_TIMEOUT_S)


def ingest(settings: Settings, n_events: int, n_dead: int, *args: str,
           stdin: bytes | None = None, home: Path | None = None):
    events, dlq = Since(settings, SIGNALING_EVENTS.name), Since(settings, SIGNALING_DLQ.name)
    try:
        done = run_cli(settings, *args, stdin=stdin, home=home)
        print(done.stderr.decode()[-2000:])
        evs = events.read(n_events, size=lambda ms: sum(
            len(events_in(m, settings.topic_partitions)) for m in ms))
        dead = dlq.read(n_dead)
    finally:
        events.close()
        dlq.close()
    validator = EventValidator.of(settings)
    # What the worker will accept, unchanged; events_in checks each sits in its caller's
    # partition.
    decoded = [validator.check(e) for m in evs for e in events_in(m, settings.topic_partitions)]
    letters = [(m.value(), {k: v.decode() for k, v in m.headers()}) for m in dead]
    return done, decoded, letters


def by_call(events) -> dict[str, list]:
    calls = defaultdict(list)
    for e in sorted(events, key=lambda e: e.ts):
        calls[e.call_id].append(e)
    return calls


def test_isup_pcap_cli_publishes_the_calls_and_dead_letters_broken_chunks(broker_settings):
    pcap = FIXTURES / "isup" / "isup_calls.pcap"
    done, events, dead = ingest(broker_settings, 15, 4, "isup-pcap", str(pcap),
                                "--switch", "sw-pcap")
    assert done.returncode == 0, done.stderr.decode()
    assert b"isup-pcap: 15 events published" in done.stderr
    calls = by_call(events)
    summary = {cid.split("-")[2]: [(e.kind, e.code, e.duration_s) for e in evs]
               for cid, evs in calls.items()}
    assert summary == {
        "1": [("attempt", None, None), ("answer", None, None), ("release", None, 60.0)],
        "2": [("attempt", None, None), ("fail", 17, None)],
        "3": [("attempt", None, None), ("fail", 1, None)],
        "4": [("attempt", None, None), ("answer", None, None), ("release", None, 25.0)],
        "5": [("attempt", None, None), ("answer", None, None), ("release", None, 12.0)],
        "6": [("attempt", None, None), ("fail", 19, None)],
    }
    first = calls[f"1001-2002-1-{T0 + 10:.3f}"]
    assert [e.ts for e in first] == [T0 + 10, T0 + 15, T0 + 75]  # capture time, not wall
    assert (first[0].caller, first[0].callee, first[0].switch) == ("8613800138000",
                                                                   "862112345678", "sw-pcap")
    assert {e.proto for e in events} == {"isup"}
    assert sorted(h[DLQ_HEADER_REASON] for _, h in dead) == ["bad_isup", "bad_m3ua",
                                                             "bad_m3ua", "bad_number"]
    assert {h[DLQ_HEADER_SOURCE] for _, h in dead} == {"isup-pcap"}
    assert all("isup_calls.pcap frame " in h[DLQ_HEADER_DETAIL] for _, h in dead)
    assert b"this is not M3UA at all" in {v for v, _ in dead}


def test_isup_pcap_cli_fails_loudly_on_a_file_tshark_cannot_read(broker_settings, tmp_path):
    bogus = tmp_path / "not-a-capture.pcap"
    bogus.write_bytes(b"plain text, no capture here\n")
    done = run_cli(broker_settings, "isup-pcap", str(bogus))
    assert done.returncode == 1
    assert b"tshark could not read all of" in done.stderr


def test_isup_pcap_cli_reads_every_link_type_and_every_file_after_a_bad_one(broker_settings,
                                                                          tmp_path):
    """M2PA, M2UA (pcapng), the M3UA drafts, MTP2 and a fragmented IAM, after a file tshark
    cannot read: every good file is published, each file has its line, the exit status says
    one file could not be read, and the undecodable SS7 is dead-lettered with its reason."""
    bogus = tmp_path / "broken.pcap"
    bogus.write_bytes(b"plain text, no capture here\n")
    ss7 = FIXTURES / "ss7"
    names = ["m2pa.pcap", "m2ua.pcapng", "m3ua_drafts.pcap", "mtp2.pcap",
             "sctp_fragmented.pcap", "undecodable.pcap"]
    done, events, dead = ingest(broker_settings, 3 + 2 + 7 + 3 + 2, 2, "isup-pcap", str(bogus),
                                *(str(ss7 / n) for n in names), "--switch", "sw-links")
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert f"ERROR {bogus}: NOT READ: tshark could not read all of" in err
    assert "Running as user" not in err
    for name, count in zip(names, (3, 2, 7, 3, 2, 0)):
        assert f"{ss7 / name}: " in err and f"{name}: " in err
        line = next(ln for ln in err.splitlines() if f"{ss7 / name}: " in ln)
        assert f" {count} events published" in line, line
    cics = sorted({int(e.call_id.split("-")[2]) for e in events})
    assert cics == [11, 12, 13, 14, 15, 16, 17]
    assert {e.switch for e in events} == {"sw-links"} and {e.proto for e in events} == {"isup"}
    assert sorted(h[DLQ_HEADER_REASON] for _, h in dead) == ["bad_isup", "bad_m3ua"]
    assert all("undecodable.pcap frame " in h[DLQ_HEADER_DETAIL] for _, h in dead)


def test_isup_pcap_cli_ansi(broker_settings):
    done, events, dead = ingest(broker_settings, 3, 0, "isup-pcap",
                                str(FIXTURES / "ss7" / "ansi.pcap"), "--standard", "ansi")
    assert done.returncode == 0, done.stderr.decode()
    assert [(e.kind, e.caller, e.callee, e.duration_s) for e in events] == [
        ("attempt", "862125550123", "863105550199", None),
        ("answer", "862125550123", "863105550199", None),
        ("release", "862125550123", "863105550199", 15.0)]
    assert {e.switch for e in events} == {f"pc-{0x040506}"} and dead == []


def test_isup_json_cli_from_stdin(broker_settings):
    lines = (FIXTURES / "isup" / "probe.jsonl").read_bytes()
    done, events, dead = ingest(broker_settings, 7, 7, "isup-json", "-", stdin=lines)
    assert done.returncode == 0, done.stderr.decode()
    kinds = sorted((e.call_id.split("-")[2], e.kind, e.code) for e in events)
    assert kinds == [("1", "answer", None), ("1", "attempt", None), ("1", "release", None),
                     ("2", "attempt", None), ("2", "fail", 17),
                     ("3", "attempt", None), ("3", "fail", 1)]
    assert sorted(h[DLQ_HEADER_REASON] for _, h in dead) == [
        "bad_number", "bad_value", "missing_field", "missing_field", "not_json", "not_object",
        "wrong_type"]
    originals = set(lines.splitlines())
    assert all(v in originals for v, _ in dead)
    assert {h[DLQ_HEADER_SOURCE] for _, h in dead} == {"isup-json"}
    assert all(h[DLQ_HEADER_DETAIL].startswith("stdin line ") for _, h in dead)


def test_cdr_cli_both_dialects(broker_settings, tmp_path: Path):
    csv_path = tmp_path / "billing.csv"
    shutil.copy(FIXTURES / "cdr" / "calls.csv", csv_path)
    done, events, dead = ingest(broker_settings, 14, 7, "cdr", str(csv_path))
    assert done.returncode == 0, done.stderr.decode()
    calls = by_call(events)
    assert [e.kind for e in calls["c-ok"]] == ["attempt", "answer", "release"]
    assert calls["c-ok"][-1].duration_s == 60.0 and calls["c-ok"][0].ts == T0
    assert [(e.kind, e.code, e.proto) for e in calls["c-sip404"]][-1] == ("fail", 404, "sip")
    assert len(dead) == 7 and all("billing.csv line " in h[DLQ_HEADER_DETAIL] for _, h in dead)
    assert {h[DLQ_HEADER_SOURCE] for _, h in dead} == {"cdr"}
    assert b"c-badtime,yesterday noon,,,8613800138000,8613900139006,BUSY,17,,,tk-01," in {
        v for v, _ in dead}

    done, events, dead = ingest(broker_settings, 7, 2, "cdr", "--dialect", "asterisk",
                                "--timezone", "Asia/Shanghai",
                                str(FIXTURES / "cdr" / "Master.csv"))
    assert done.returncode == 0, done.stderr.decode()
    assert sorted((e.kind, e.code) for e in events) == sorted(
        [("attempt", None), ("answer", None), ("release", None), ("attempt", None),
         ("fail", 19), ("attempt", None), ("fail", 17)])
    assert min(e.ts for e in events) == T0
    assert sorted(h[DLQ_HEADER_REASON] for _, h in dead) == ["bad_number", "missing_field"]


def test_a_capture_replayed_twice_counts_once_unless_told_again(broker_settings, tmp_path):
    """Event ids already published on this host are skipped (services/ingest/replay_guard)."""
    csv_path = FIXTURES / "cdr" / "calls.csv"
    first = ingest(broker_settings, 14, 7, "cdr", str(csv_path), home=tmp_path)
    assert len(first[1]) == 14
    again = ingest(broker_settings, 0, 7, "cdr", str(csv_path), home=tmp_path)
    assert again[1] == [] and "already_published 14" in again[0].stderr.decode()
    forced = ingest(broker_settings, 14, 7, "cdr", str(csv_path), "--again", home=tmp_path)
    assert len(forced[1]) == 14
