"""``dialguard ingest hep``: a HEPv3 collector (UDP and TCP) that publishes call events live.

Point Kamailio's siptrace (``duplicate_uri``, ``hep_mode_on=1``, ``hep_version=3``), OpenSIPS'
tracer, FreeSWITCH or a HOMER capture agent at it. Each packet is decoded
(:mod:`services.ingest.hep`), its SIP payload followed through its dialog
(:mod:`services.ingest.sip_dialogs`), and the events published to ``signaling.events`` as soon
as the message that completes them arrives (an attempt as soon as the INVITE does). Event time
is the capture time in the packet, never the collector's clock.

Both transports listen on the same host and port. UDP: one datagram is one packet. TCP: packets
back to back, framed by their length field; garbage (and a length field outside
``HEP3``-header..``DIALGUARD_HEP_TCP_MAX_FRAME_BYTES``) is dead-lettered and framing resumes at
the next ``HEP3`` (see :class:`services.ingest.hep.HepStream` for why the connection stays
open).

TCP connections are bounded, because each holds a file descriptor and a process out of them
cannot accept, produce to Kafka or answer its metrics: at most ``DIALGUARD_HEP_TCP_MAX_CONNECTIONS``
at once (clamped under the open-file limit; past it a connection is accepted and closed at
once), and one silent for ``DIALGUARD_HEP_TCP_IDLE_TIMEOUT_S`` is closed; both counted in
``dialguard_ingest_hep_tcp_closed_total{why}``. Lines that repeat per connection or per failed
accept are rate-limited (:class:`services.log_limit.LogLimiter`).

Runs until SIGTERM or SIGINT, then flushes what the broker has not acknowledged and prints the
summary. Metrics on ``DIALGUARD_INGEST_METRICS_PORT`` (``--metrics-port``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
import socket
import sys
import time
from typing import Any

from confluent_kafka import KafkaException
from prometheus_client import Counter, Gauge, start_http_server

from services.ingest.hep import (HEADER, MAX_PACKET, PROTO_SIP, HepError, HepPacket, HepStream,
                                 Rejected, decode)
from services.ingest.sink import INGEST_DELIVERY_FAILED, EventSink
from services.ingest.sip_feed import SipFeed
from services.log_limit import LogLimiter
from services.settings import Settings

log = logging.getLogger("dialguard.ingest.hep")

SOURCE = "hep"
REASON_NOT_SIP = "not_sip"
#: A packet that crashed the collector's own code: dead-lettered, logged, and the collector
#: keeps listening (an exception escaping ``datagram_received`` would close the UDP socket).
REASON_COLLECTOR_ERROR = "collector_error"
#: Wall seconds between housekeeping turns (dialog expiry, delivery reports, progress line).
TICK_S = 1.0
#: Kernel receive buffer asked for the UDP socket: a tracer sends in bursts, and a datagram
#: the kernel drops never reaches the DLQ (the kernel may grant less; see net.core.rmem_max).
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
#: File descriptors kept free under the open-file limit for what is not a HEP connection (the
#: Kafka producer's broker sockets, the metrics endpoint and its scrapes, the UDP socket, logs).
FD_RESERVE = 64
#: Connections accepted per readiness of the listening socket (and its listen backlog): bounds
#: one loop turn's work, as asyncio's own server does.
ACCEPT_BATCH = 100
#: After a failed accept (out of descriptors, ...) the listening socket rests this long before
#: the next try: the kernel keeps reporting it readable, and retrying at once spins and floods
#: the log.
ACCEPT_RETRY_S = 1.0
#: Rate-limited log lines (connections opened/closed, over the cap, idle, accept errors) come
#: at most once per this many seconds per kind; the metrics carry the exact counts.
LOG_EVERY_S = 60.0
# Why the collector closed a TCP connection itself (bounded: a metric label).
CLOSE_OVER_CAP = "over_cap"
CLOSE_IDLE = "idle"

HEP_PACKETS = Counter("dialguard_ingest_hep_packets_total",
                      "HEP packets (or rejected byte spans) received, by transport",
                      ["transport"])
HEP_CONNECTIONS = Counter("dialguard_ingest_hep_tcp_connections_total",
                          "TCP connections accepted by the HEP collector")
HEP_TCP_CLOSED = Counter("dialguard_ingest_hep_tcp_closed_total",
                         "TCP connections the HEP collector closed itself, by why (over_cap: "
                         "accepted past DIALGUARD_HEP_TCP_MAX_CONNECTIONS and closed at once; "
                         "idle: silent for DIALGUARD_HEP_TCP_IDLE_TIMEOUT_S)", ["why"])
HEP_TCP_OPEN = Gauge("dialguard_ingest_hep_tcp_connections_open",
                     "HEP TCP connections open now (at most the connection cap)")
HEP_TCP_ACCEPT_ERRORS = Counter("dialguard_ingest_hep_tcp_accept_errors_total",
                                "Failed accepts of HEP TCP connections (e.g. out of file "
                                "descriptors); the listener rests a second after each")
for _why in (CLOSE_OVER_CAP, CLOSE_IDLE):
    HEP_TCP_CLOSED.labels(_why)


def connection_cap(wanted: int) -> int:
    """At most ``wanted`` connections, and enough descriptors left under the open-file limit
    for everything else (:data:`FD_RESERVE`). The soft limit is raised to the hard one first
    (as Go's runtime does): the default soft 1024 would otherwise clamp the default cap."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return max(1, wanted)
    cap = max(1, min(wanted, soft - FD_RESERVE))
    if cap < wanted:
        log.warning("HEP TCP connection cap lowered from %d to %d: the open-file limit is %d "
                    "(ulimit -n) and %d descriptors are kept for Kafka, metrics and logs",
                    wanted, cap, soft, FD_RESERVE)
    return cap


class HepCollector:
    """Turns HEP packets from any transport into events; one per process, one tracker."""

    def __init__(self, settings: Settings, sink: EventSink, switch: str = "") -> None:
        self.settings = settings
        self.sink = sink
        #: ``switch`` of every event: ``--switch``, else DIALGUARD_SIP_SWITCH, else
        #: ``hep-<capture agent id>`` per packet. Trunk decisions name this switch, so it must
        #: be the ``DIALGUARD_SWITCH_NAME`` of the adapter driving the traced switch.
        self.switch = switch or settings.sip_switch
        self.feed = SipFeed.for_settings(settings, sink)
        #: Capture time of the newest packet and the monotonic clock when it came, so that
        #: expiry keeps moving in event time while the network is quiet.
        self._clock = (0.0, time.monotonic())
        if not HEADER.size <= settings.hep_tcp_max_frame_bytes <= MAX_PACKET:
            raise ValueError(f"DIALGUARD_HEP_TCP_MAX_FRAME_BYTES="
                             f"{settings.hep_tcp_max_frame_bytes} must be within "
                             f"{HEADER.size}..{MAX_PACKET} (a HEPv3 length field's range)")
        if settings.hep_tcp_max_connections < 1:
            raise ValueError(f"DIALGUARD_HEP_TCP_MAX_CONNECTIONS="
                             f"{settings.hep_tcp_max_connections} must be at least 1")
        self.max_connections = connection_cap(settings.hep_tcp_max_connections)
        self.idle_timeout_s = settings.hep_tcp_idle_timeout_s
        #: TCP connections admitted and not yet closed.
        self.tcp_open = 0
        self.log_limit = LogLimiter(log, LOG_EVERY_S)

    def admit(self, peer: str) -> bool:
        """Take a new TCP connection unless the cap is reached (then it is counted and the
        caller closes it at once: accepting and closing frees the backlog, refusing to accept
        would leave the listening socket readable and the peers queued)."""
        if self.tcp_open >= self.max_connections:
            HEP_TCP_CLOSED.labels(CLOSE_OVER_CAP).inc()
            self.log_limit.warning(CLOSE_OVER_CAP, "HEP TCP connection from %s closed at once: "
                                   "%d connections open, the cap (DIALGUARD_HEP_TCP_MAX_"
                                   "CONNECTIONS)", peer, self.tcp_open)
            return False
        self.tcp_open += 1
        HEP_TCP_OPEN.set(self.tcp_open)
        return True

    def release(self) -> None:
        self.tcp_open = max(0, self.tcp_open - 1)
        HEP_TCP_OPEN.set(self.tcp_open)

    def accept_failed(self, exc: OSError) -> None:
        HEP_TCP_ACCEPT_ERRORS.inc()
        self.log_limit.error("accept", "cannot accept HEP TCP connections: %s (%d open, cap "
                             "%d); retrying in %.0fs", exc, self.tcp_open,
                             self.max_connections, ACCEPT_RETRY_S)

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The event loop's error handler, rate-limited per message: an accept loop out of file
        descriptors reports the same error for every retry and must not flood the log."""
        message = str(context.get("message", "unhandled error"))
        held = self.log_limit.allow("loop:" + message[:200])
        if held is not None:
            loop.default_exception_handler(
                {**context, "message": message + self.log_limit.held_note(held)})

    def datagram(self, data: bytes) -> None:
        HEP_PACKETS.labels("udp").inc()
        try:
            try:
                packet = decode(data)
            except HepError as exc:
                self.sink.dead_letter(data, exc.reason, exc.detail)
                return
            self.packet(packet)
        except (KafkaException, BufferError) as exc:
            self._not_produced(exc)

    def stream_item(self, item: HepPacket | Rejected) -> None:
        HEP_PACKETS.labels("tcp").inc()
        try:
            if isinstance(item, Rejected):
                self.sink.dead_letter(item.raw, item.reason, item.detail)
            else:
                self.packet(item)
        except (KafkaException, BufferError) as exc:
            self._not_produced(exc)

    def _not_produced(self, exc: Exception) -> None:
        """A record (event or dead letter) the producer refused: counted and logged (rate-
        limited), never raised. Raised out of the protocol callbacks it would close the TCP
        connection (losing what is queued behind) or log a traceback per UDP datagram."""
        INGEST_DELIVERY_FAILED.labels(self.sink.source).inc()
        self.log_limit.error("produce", "HEP collector could not produce a record: %s", exc)

    def packet(self, packet: HepPacket) -> None:
        try:
            self._packet(packet)
        except (KafkaException, BufferError):
            raise  # the producer failed, not the packet: dead-lettering it would fail too
        except Exception as exc:  # noqa: BLE001 - keep listening, keep the bytes
            log.exception("packet from capture agent %s crashed the collector",
                          packet.capture_id)
            self.sink.dead_letter(packet.raw, REASON_COLLECTOR_ERROR, repr(exc)[:500])

    def _packet(self, packet: HepPacket) -> None:
        if packet.proto_type != PROTO_SIP:
            self.sink.dead_letter(packet.raw, REASON_NOT_SIP,
                                  f"HEP proto type {packet.proto_type}, not SIP (1)")
            return
        switch = self.switch or (
            f"hep-{packet.capture_id}" if packet.capture_id is not None else None)
        self.feed.payload(packet.payload, packet.ts, packet.raw, trunk=packet.src_ip or None,
                          switch=switch)
        if packet.ts >= self._clock[0]:
            self._clock = (packet.ts, time.monotonic())

    def tick(self) -> None:
        """Housekeeping: expire dialogs at the estimated event time, serve delivery reports."""
        latest, seen_at = self._clock
        if latest:
            self.feed.expire(latest + (time.monotonic() - seen_at))
        self.sink.tick()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, collector: HepCollector) -> None:
        self.collector = collector

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.collector.datagram(data)

    def error_received(self, exc: Exception) -> None:
        self.collector.log_limit.warning("udp_error", "UDP receive error: %s", exc)


class _TcpListener:
    """Accepts HEP TCP connections itself instead of asyncio's server.

    Why: asyncio's server accepts a batch of connections and hands each to a task, so one past
    the cap would hold its descriptor for several loop turns before it could be closed, and a
    failed accept is reported through the loop's error handler with a traceback each time.
    Here a connection past the cap is closed in the step that accepted it, and a failed accept
    is counted, logged (rate-limited) and retried after :data:`ACCEPT_RETRY_S`.
    """

    def __init__(self, collector: HepCollector, sock: socket.socket) -> None:
        self.collector = collector
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False

    @classmethod
    def bind(cls, collector: HepCollector, host: str, port: int) -> "_TcpListener":
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(ACCEPT_BATCH)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        listener = cls(collector, sock)
        listener.start()
        return listener

    def start(self) -> None:
        self._retry = None
        if not self._closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # out of descriptors, buffers, memory
                self.collector.accept_failed(exc)
                self.loop.remove_reader(self.sock.fileno())
                self._retry = self.loop.call_later(ACCEPT_RETRY_S, self.start)
                return
            HEP_CONNECTIONS.inc()
            peer = "%s:%s" % tuple(addr[:2]) if addr else "?"
            if not self.collector.admit(peer):
                conn.close()
                continue
            conn.setblocking(False)
            task = self.loop.create_task(self._connect(conn, peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket, peer: str) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: _Tcp(self.collector, peer), conn)
        except OSError as exc:
            self.collector.release()
            conn.close()
            self.collector.log_limit.warning("connect", "HEP TCP connection from %s lost while "
                                             "being set up: %s", peer, exc)

    def close(self) -> None:
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class _Tcp(asyncio.Protocol):
    """One admitted HEP TCP connection (see :class:`_TcpListener`): framed, closed when idle."""

    def __init__(self, collector: HepCollector, peer: str) -> None:
        self.collector = collector
        self.stream = HepStream(collector.settings.hep_tcp_max_frame_bytes)
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.last_data = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.last_data = time.monotonic()
        if self.collector.idle_timeout_s > 0:
            self._idle_timer = asyncio.get_running_loop().call_later(
                self.collector.idle_timeout_s, self._check_idle)
        self.collector.log_limit.info("tcp_open", "HEP over TCP from %s (%d open)", self.peer,
                                      self.collector.tcp_open)

    def _check_idle(self) -> None:
        """Close the connection if silent for the idle timeout, else look again when it would
        be (one timer per connection, not one per packet)."""
        timeout = self.collector.idle_timeout_s
        idle = time.monotonic() - self.last_data
        if idle < timeout:
            self._idle_timer = asyncio.get_running_loop().call_later(timeout - idle,
                                                                     self._check_idle)
            return
        self._idle_timer = None
        HEP_TCP_CLOSED.labels(CLOSE_IDLE).inc()
        self.collector.log_limit.info(CLOSE_IDLE, "HEP TCP connection from %s closed: nothing "
                                      "received for %.0fs (DIALGUARD_HEP_TCP_IDLE_TIMEOUT_S)",
                                      self.peer, idle)
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_data = time.monotonic()
        for item in self.stream.feed(data):
            self.collector.stream_item(item)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self.collector.release()
        tail = self.stream.close()
        if tail is not None:
            self.collector.stream_item(tail)
        self.collector.log_limit.info("tcp_closed", "HEP over TCP from %s closed%s", self.peer,
                                      f" ({exc})" if exc else "")


async def serve(collector: HepCollector, host: str, port: int,
                stop: asyncio.Event) -> None:
    """Listen on UDP and TCP ``host:port`` until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(collector.loop_exception)
    udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(collector),
                                                 local_addr=(host, port))
    udp_sock = udp.get_extra_info("socket")
    udp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
    tcp = _TcpListener.bind(collector, host, port)
    log.info("HEP collector listening on udp+tcp %s:%d (switch %s, setup timeout %.0fs, "
             "max dialogs %d, UDP receive buffer %d bytes, at most %d TCP connections, "
             "idle timeout %.0fs)", host, port,
             collector.switch or "from capture id",
             collector.settings.sip_setup_timeout_s, collector.settings.sip_max_dialogs,
             udp_sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
             collector.max_connections, collector.idle_timeout_s)
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), TICK_S)
            except asyncio.TimeoutError:
                collector.tick()
    finally:
        udp.close()
        tcp.close()


def run(args: argparse.Namespace, settings: Settings) -> int:
    host = args.host or settings.hep_host
    port = args.port if args.port is not None else settings.hep_port
    metrics_port = settings.ingest_metrics_port if args.metrics_port is None \
        else args.metrics_port
    if metrics_port:
        start_http_server(metrics_port, addr=settings.metrics_host)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, metrics_port)
    sink = EventSink(settings, SOURCE)
    collector = HepCollector(settings, sink, args.switch or "")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(collector, host, port, stop)

    try:
        asyncio.run(main())
    finally:
        log.info("HEP collector stopping: %s", collector.feed.summary())
        print(f"[ingest] {collector.feed.summary()}", file=sys.stderr, flush=True)
        sink.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hep", help="HEPv3 collector (UDP+TCP): live SIP from Kamailio/OpenSIPS/HOMER agents",
        description="Listen for HEPv3 packets (Kamailio siptrace with hep_mode_on=1 and "
                    "hep_version=3, OpenSIPS tracer, FreeSWITCH, HOMER capture agents) on UDP "
                    "and TCP, follow each SIP dialog by Call-ID and publish attempt / answer / "
                    "release / fail events to signaling.events as they happen (event time = "
                    "capture time). Packets that are not HEPv3 or not usable SIP go to "
                    "signaling.events.dlq with the reason. Runs until SIGTERM/SIGINT.",
        epilog="Kamailio example: modparam(\"siptrace\", \"duplicate_uri\", "
               "\"sip:127.0.0.1:9060\"); modparam(\"siptrace\", \"hep_mode_on\", 1); "
               "modparam(\"siptrace\", \"hep_version\", 3); modparam(\"siptrace\", "
               "\"trace_on\", 1); modparam(\"siptrace\", \"trace_mode\", 1). Tunables: "
               "DIALGUARD_SIP_SETUP_TIMEOUT_S, DIALGUARD_SIP_MAX_DIALOGS, DIALGUARD_SIP_SWITCH, "
               "DIALGUARD_MAX_DURATION_S, DIALGUARD_HEP_TCP_MAX_CONNECTIONS, "
               "DIALGUARD_HEP_TCP_IDLE_TIMEOUT_S, DIALGUARD_HEP_TCP_MAX_FRAME_BYTES.")
    p.add_argument("--host", default=None, help="address to listen on (default "
                   "DIALGUARD_HEP_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="UDP and TCP port (default "
                   "DIALGUARD_HEP_PORT, 9060)")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics port "
                   "(default DIALGUARD_INGEST_METRICS_PORT, 9313; 0 = no metrics server)")
    p.add_argument("--switch", default=None, help="switch name stamped on the events (default "
                   "DIALGUARD_SIP_SWITCH, else hep-<capture agent id>); give it the "
                   "DIALGUARD_SWITCH_NAME of the traced switch's adapter, or trunk decisions "
                   "would name a switch no adapter drives")
    p.set_defaults(ingest_func=run)
