"""HEP collector and SIP pcap replay against the session's real Kafka broker.

The collector runs as the operators (and the Kamailio end-to-end test) run it:
``python -m services.cli ingest hep --host 127.0.0.1 --port P``, in a subprocess. It is fed
real Kamailio siptrace output: the committed fixture replayed over UDP and over TCP, and a live
Kamailio proxy tracing calls to it. Each collector stamps its own switch name, so a test reads
back only its own events from the shared ``signaling.events``.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import pytest

from services.broker import free_ports
from services.ingest import hep
from services.settings import REPO_ROOT, Settings
from streams.schema import DLQ_HEADER_REASON, DLQ_HEADER_SOURCE
from streams.topics import SIGNALING_DLQ, SIGNALING_EVENTS
from tests.integration import kamailio_trace
from tests.integration.conftest import TEST_PARTITIONS
from tests.integration.worker_harness import TopicReader, events_in

pytestmark = pytest.mark.integration

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "sip"
HEP_FIXTURE = FIXTURES / "kamailio_calls.hep"
PCAP_FIXTURE = FIXTURES / "kamailio_calls.pcap"
START_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 60.0
#: What the recorded calls must become (callee -> kinds, codes, caller, attest).
EXPECTED_KINDS = {callee: spec["kinds"] for callee, spec in kamailio_trace.EXPECTED.items()}


def _env(settings: Settings, switch: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")}
    env.update(DIALGUARD_KAFKA_BOOTSTRAP=settings.kafka_bootstrap, DIALGUARD_SIP_SWITCH=switch,
               DIALGUARD_HOME=str(settings.home), PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


class Collector:
    """``dialguard ingest hep`` in a subprocess on free ports; stderr kept in a file.

    ``env``: extra ``DIALGUARD_*`` settings; ``max_open_files``: the process's open-file limit
    (soft and hard), to run out of descriptors with hundreds of connections, not 20,000."""

    def __init__(self, settings: Settings, workdir: Path, env: dict[str, str] | None = None,
                 max_open_files: int = 0) -> None:
        self.port, self.metrics_port = free_ports(2)
        self.switch = f"sw-{uuid.uuid4().hex[:8]}"
        self.log = workdir / f"collector-{self.switch}.log"

        def limit_files() -> None:
            if max_open_files:
                resource.setrlimit(resource.RLIMIT_NOFILE, (max_open_files, max_open_files))

        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "ingest", "hep", "--host", "127.0.0.1",
                 "--port", str(self.port), "--metrics-port", str(self.metrics_port)],
                cwd=REPO_ROOT, env=_env(settings, self.switch, env), stdout=log,
                stderr=subprocess.STDOUT, preexec_fn=limit_files)
        deadline = time.monotonic() + START_TIMEOUT_S
        while "listening" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"collector did not start: {self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode()


@pytest.fixture
def collector(broker_settings: Settings, tmp_path: Path) -> Iterator[Collector]:
    c = Collector(broker_settings, tmp_path)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def events_reader(broker_settings: Settings) -> Iterator[TopicReader]:
    reader = TopicReader(broker_settings, SIGNALING_EVENTS.name)
    try:
        yield reader
    finally:
        reader.close()


@pytest.fixture
def dlq_reader(broker_settings: Settings) -> Iterator[TopicReader]:
    reader = TopicReader(broker_settings, SIGNALING_DLQ.name)
    try:
        yield reader
    finally:
        reader.close()


def events_of(reader: TopicReader, switch: str) -> list[dict]:
    """Events of ``switch`` in the records read so far (batch records expanded); ``_key`` is
    the key whose partition each sits in (checked by ``events_in``)."""
    out = []
    for m in reader.messages:
        if m.value() is None or m.value()[:1] not in (b"{", b"["):
            continue  # another test's malformed record on the shared topic
        for ev in events_in(m, TEST_PARTITIONS):
            if ev.get("switch") == switch:
                ev["_key"] = ev["caller"].encode()
                out.append(ev)
    return out


def read_events(reader: TopicReader, switch: str, count: int) -> list[dict]:
    reader.poll_until(lambda _: len(events_of(reader, switch)) >= count, READ_TIMEOUT_S,
                      quiet_s=1.0)
    return events_of(reader, switch)


def by_callee(events: list[dict]) -> dict[str, list[dict]]:
    calls: dict[str, list[dict]] = defaultdict(list)
    for ev in sorted(events, key=lambda e: e["ts"]):
        calls[ev["callee"]].append(ev)
    return dict(calls)


def check_recorded_calls(events: list[dict], hold: dict[str, float] | None = None) -> None:
    """The five recorded calls, each exactly once, with the right facts."""
    calls = by_callee(events)
    assert {k: [e["kind"] for e in v] for k, v in calls.items()} == EXPECTED_KINDS
    for callee, spec in kamailio_trace.EXPECTED.items():
        evs = calls[callee]
        assert {e["caller"] for e in evs} == {spec["caller"]}
        assert {e["_key"] for e in evs} == {spec["caller"].encode()}  # keyed by caller
        assert {e["proto"] for e in evs} == {"sip"}
        assert len({e["call_id"] for e in evs}) == 1
        assert {e["attest"] for e in evs} == {spec.get("attest")}
        if "code" in spec:
            assert evs[-1]["code"] == spec["code"]
        if callee in kamailio_trace.HOLD_S:
            answer, release = evs[1], evs[2]
            assert answer["code"] == 200
            assert release["duration_s"] == pytest.approx(release["ts"] - answer["ts"], abs=1e-5)
            held = (hold or kamailio_trace.HOLD_S)[callee]
            assert held - 0.05 < release["duration_s"] < held + 1.0
            print(f"{callee}: held {held}s, measured {release['duration_s']:.3f}s")


def dead_letters(reader: TopicReader, marker: bytes) -> list[tuple[str, str, bytes]]:
    out = []
    for m in reader.messages:
        if marker in (m.value() or b""):
            headers = dict(m.headers() or [])
            out.append((headers[DLQ_HEADER_REASON].decode(),
                        headers[DLQ_HEADER_SOURCE].decode(), m.value()))
    return out


def zip_bomb(marker: bytes, ts_sec: int) -> bytes:
    """A HEP packet (about 60 KB) whose compressed payload inflates to 62 MB; ``marker`` rides
    in a vendor chunk."""
    raw = hep.encode(hep.HepPacket(payload=b"x", ts_sec=ts_sec, vendor_chunks={(9, 1): marker}))
    plain = hep.CHUNK_HEADER.pack(0, hep.CHUNK_PAYLOAD, 7) + b"x"
    packed = zlib.compress(b"\x00" * 62_000_000, 9)
    raw = raw.replace(plain, hep.CHUNK_HEADER.pack(0, hep.CHUNK_COMPRESSED_PAYLOAD,
                                                   6 + len(packed)) + packed)
    return raw[:4] + struct.pack("!H", len(raw)) + raw[6:]


def garbage(marker: bytes, sample: hep.HepPacket) -> dict[str, bytes]:
    """One bad input per reason, each carrying ``marker`` so the test finds its dead letters."""
    log = hep.HepPacket(payload=b"log line " + marker, ts_sec=sample.ts_sec, proto_type=100)
    not_sip = hep.HepPacket(payload=b"hello " + marker + b"\r\n\r\n", ts_sec=sample.ts_sec)
    cut = hep.encode(hep.HepPacket(payload=marker + sample.payload, ts_sec=sample.ts_sec))
    return {"bad_magic": b"GARBAGE " + marker, "truncated": cut[:len(cut) - 40],
            "not_sip": hep.encode(log), "sip_parse_error": hep.encode(not_sip),
            hep.REASON_INFLATE_TOO_LARGE: zip_bomb(marker, sample.ts_sec)}


def fixture_packets() -> list[bytes]:
    return [p.raw for p in hep.read_file(HEP_FIXTURE.read_bytes())]


def test_udp_replay_of_kamailio_trace_publishes_each_call_once(collector, events_reader,
                                                                 dlq_reader):
    packets = fixture_packets()
    marker = uuid.uuid4().hex.encode()
    bad = garbage(marker, hep.decode(packets[0]))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i, raw in enumerate(packets):
            sock.sendto(raw, ("127.0.0.1", collector.port))
            if i == 10:
                for junk in bad.values():
                    sock.sendto(junk, ("127.0.0.1", collector.port))
            time.sleep(0.002)  # a tracer's pace; no receive-buffer overrun on a busy box
    finally:
        sock.close()
    events = read_events(events_reader, collector.switch, 12)
    check_recorded_calls(events)
    dlq_reader.poll_until(lambda _: len(dead_letters(dlq_reader, marker)) >= len(bad),
                          READ_TIMEOUT_S)
    letters = dead_letters(dlq_reader, marker)
    assert sorted(r for r, _, _ in letters) == sorted(bad)
    assert {s for _, s, _ in letters} == {"hep"}
    assert {v for _, _, v in letters} == set(bad.values())  # original bytes, untouched
    metrics = collector.metrics()
    assert 'dialguard_ingest_events_total{kind="attempt",source="hep"} 5.0' in metrics
    assert 'dialguard_ingest_dead_letters_total{reason="not_sip",source="hep"} 1.0' in metrics
    assert ('dialguard_ingest_dead_letters_total{reason="hep_inflate_too_large",source="hep"} '
            '1.0') in metrics
    assert 'dialguard_ingest_ignored_total{source="hep",why="retransmission"}' in metrics
    assert collector.stop() == 0
    out = collector.output()
    assert "12 events published" in out and "5 dead-lettered" in out, out


def test_tcp_stream_with_garbage_and_a_cut_packet(collector, events_reader, dlq_reader):
    packets = fixture_packets()
    marker = uuid.uuid4().hex.encode()
    junk = b"\x00\x00JUNK " + marker
    # A frame whose length field is garbage (past any real packet): it must not hold the
    # packets behind it until 64 KiB more arrive.
    bad_length = b"HEP3\xff\xf0" + b"LENGTH " + marker
    stream = (b"".join(packets[:20]) + junk + b"".join(packets[20:30]) + bad_length
              + b"".join(packets[30:]))
    tail = hep.encode(hep.HepPacket(payload=b"INVITE " + marker, ts_sec=1))[:30]
    sock = socket.create_connection(("127.0.0.1", collector.port))
    try:
        for pos in range(0, len(stream), 777):  # chunks that split packets anywhere
            sock.sendall(stream[pos:pos + 777])
        sock.sendall(tail)
    finally:
        sock.close()
    events = read_events(events_reader, collector.switch, 12)
    check_recorded_calls(events)
    dlq_reader.poll_until(lambda _: len(dead_letters(dlq_reader, marker)) >= 1, READ_TIMEOUT_S)
    dlq_reader.poll_until(lambda _: len(dead_letters(dlq_reader, marker)) >= 2, READ_TIMEOUT_S)
    assert sorted(r for r, _, _ in dead_letters(dlq_reader, marker)) == ["bad_length",
                                                                        "bad_magic"]
    # The cut packet at the end of the connection is dead-lettered as truncated (its bytes
    # are only HEP header and chunks, so find it by the collector's count instead of a marker).
    deadline = time.monotonic() + READ_TIMEOUT_S
    while 'reason="truncated",source="hep"} 1.0' not in collector.metrics():
        assert time.monotonic() < deadline, collector.metrics()
        time.sleep(0.2)


def metric_value(metrics: str, series: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return 0.0


#: Open-file limit of the collector in the connection-cap test, and its connection cap: idle
#: connections beyond the limit used to exhaust descriptors (accept errors, a silent metrics
#: endpoint); under a cap the surplus is accepted and closed at once.
CAP_TEST_OPEN_FILES = 200
CAP_TEST_MAX_CONNECTIONS = 50
CAP_TEST_CONNECTIONS = 300


def test_tcp_connections_past_the_cap_are_closed_and_the_collector_keeps_working(
        broker_settings, events_reader, tmp_path):
    c = Collector(broker_settings, tmp_path, max_open_files=CAP_TEST_OPEN_FILES,
                  env={"DIALGUARD_HEP_TCP_MAX_CONNECTIONS": str(CAP_TEST_MAX_CONNECTIONS)})
    socks: list[socket.socket] = []
    try:
        for _ in range(CAP_TEST_CONNECTIONS):
            socks.append(socket.create_connection(("127.0.0.1", c.port), timeout=10))
        over = CAP_TEST_CONNECTIONS - CAP_TEST_MAX_CONNECTIONS
        series = 'dialguard_ingest_hep_tcp_closed_total{why="over_cap"}'
        deadline = time.monotonic() + READ_TIMEOUT_S
        while metric_value(c.metrics(), series) < over:  # the metrics endpoint answers
            assert time.monotonic() < deadline, c.metrics()
            time.sleep(0.2)
        metrics = c.metrics()
        assert metric_value(metrics, series) == over
        assert metric_value(metrics, "dialguard_ingest_hep_tcp_connections_open") == \
            CAP_TEST_MAX_CONNECTIONS
        # Still ingesting: the recorded calls over UDP while every slot is taken.
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for raw in fixture_packets():
                udp.sendto(raw, ("127.0.0.1", c.port))
                time.sleep(0.002)
        finally:
            udp.close()
        check_recorded_calls(read_events(events_reader, c.switch, 12))
        # One log line for the surplus, not one per connection; never out of descriptors.
        assert c.output().count("closed at once") == 1, c.output()[-2000:]
        assert metric_value(metrics, "dialguard_ingest_hep_tcp_accept_errors_total") == 0
        assert "Too many open files" not in c.output()
        # The surplus is gone and the slots are taken: closing ours frees them for others.
        for sock in socks:
            sock.close()
        socks.clear()
        deadline = time.monotonic() + READ_TIMEOUT_S
        while metric_value(c.metrics(), "dialguard_ingest_hep_tcp_connections_open") > 0:
            assert time.monotonic() < deadline, c.metrics()
            time.sleep(0.2)
    finally:
        for sock in socks:
            sock.close()
        c.stop()


def test_idle_tcp_connection_is_closed(broker_settings, tmp_path):
    c = Collector(broker_settings, tmp_path, env={"DIALGUARD_HEP_TCP_IDLE_TIMEOUT_S": "0.5"})
    try:
        sock = socket.create_connection(("127.0.0.1", c.port), timeout=READ_TIMEOUT_S)
        try:
            sock.sendall(fixture_packets()[0])  # some traffic, then silence
            assert sock.recv(1) == b""  # the collector closed it (a timeout would raise)
        finally:
            sock.close()
        assert metric_value(c.metrics(),
                            'dialguard_ingest_hep_tcp_closed_total{why="idle"}') == 1
    finally:
        c.stop()


def test_live_kamailio_siptrace_to_collector(collector, events_reader, tmp_path):
    """Kamailio mirrors calls to the collector as they happen; the attempt is on the topic
    while the phone is still ringing."""
    caller_port, callee_port = free_ports(2)
    kam = kamailio_trace.Kamailio(tmp_path, collector.port, callee_port)
    caller = callee = None
    try:
        kam.start()
        caller = kamailio_trace.Phone(caller_port, ("127.0.0.1", kam.sip_port))
        callee = kamailio_trace.Phone(callee_port, ("127.0.0.1", kam.sip_port))
        call = kamailio_trace.Call(caller, callee, "+8613800138000", "+8613900139777",
                                   pai="tel:+8613800138099",
                                   identity=kamailio_trace.IDENTITY_A)
        call.invite()
        call.callee_replies(180, "Ringing")
        ringing = read_events(events_reader, collector.switch, 1)
        assert [(e["kind"], e["callee"]) for e in ringing] == [("attempt", "+8613900139777")]
        call.callee_replies(200, "OK")
        call.caller.send(call._in_dialog("ACK", 1, from_caller=True))
        call.callee.expect("ACK")
        time.sleep(0.8)
        call.hangup(by_caller=False)
        kamailio_trace.run_calls(caller, callee)
    finally:
        for phone in (caller, callee):
            if phone is not None:
                phone.close()
        kam.stop()
    events = read_events(events_reader, collector.switch, 15)
    mine = [e for e in events if e["callee"] == "+8613900139777"]
    assert [e["kind"] for e in mine] == ["attempt", "answer", "release"]
    assert mine[0]["caller"] == "+8613800138099" and mine[0]["attest"] == "A"
    assert 0.75 < mine[2]["duration_s"] < 2.0
    check_recorded_calls([e for e in events if e["callee"] != "+8613900139777"])
    assert {e["trunk"] for e in events} == {"127.0.0.1"}


def test_sip_pcap_replay_publishes_the_same_calls(broker_settings, events_reader, tmp_path):
    switch = f"pcap-{uuid.uuid4().hex[:8]}"
    done = subprocess.run([sys.executable, "-m", "services.cli", "ingest", "sip-pcap",
                           str(PCAP_FIXTURE), "--switch", switch], cwd=REPO_ROOT,
                          env=_env(broker_settings, ""), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "57 SIP frames" in done.stderr
    assert "12 events published" in done.stderr and "0 dead-lettered" in done.stderr
    print(done.stderr.strip().splitlines()[-1])
    events = read_events(events_reader, switch, 12)
    check_recorded_calls(events)


def test_sip_pcap_reads_every_file_and_transport(broker_settings, events_reader, tmp_path):
    """A missing file and an empty one do not stop the capture of SIP over TCP 6060,
    WebSocket, SCTP and untidy UDP/IPv6 after them; each file has its line; exit 1."""
    switch = f"pcap-{uuid.uuid4().hex[:8]}"
    empty = tmp_path / "empty.pcap"
    empty.touch()
    done = subprocess.run([sys.executable, "-m", "services.cli", "ingest", "sip-pcap",
                           "/nonexistent/capture.pcap", str(empty),
                           str(FIXTURES / "sip_transports.pcap"), "--switch", switch],
                          cwd=REPO_ROOT, env=_env(broker_settings, ""), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "no such capture file: /nonexistent/capture.pcap" in done.stderr
    assert f"{empty} is empty (0 bytes)" in done.stderr
    assert "sip_transports.pcap: 10 SIP frames, 10 events published" in done.stderr
    events = read_events(events_reader, switch, 10)
    assert sorted((e["call_id"], e["kind"]) for e in events) == sorted(
        [("tcp6060@dialguard", k) for k in ("attempt", "answer", "release")]
        + [("ws@dialguard", k) for k in ("attempt", "fail")]
        + [("sctp@dialguard", k) for k in ("attempt", "fail")]
        + [("untidy@dialguard", k) for k in ("attempt", "answer", "release")])


def test_sip_pcap_of_a_missing_file_fails_clearly(broker_settings):
    done = subprocess.run([sys.executable, "-m", "services.cli", "ingest", "sip-pcap",
                           "/nonexistent/capture.pcap"], cwd=REPO_ROOT,
                          env=_env(broker_settings, ""), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "no such capture file" in done.stderr
