"""``dialguard ingest hep``: a HEPv3 collector (UDP and TCP) that publishes call events live.

Point Kamailio's siptrace (``duplicate_uri``, ``hep_mode_on=1``, ``hep_version=3``), OpenSIPS'
tracer, FreeSWITCH or a HOMER capture agent at it. Each packet is decoded
(:mod:`services.ingest.hep`), its SIP payload followed through its dialog
(:mod:`services.ingest.sip_dialogs`), and the events published to ``signaling.events`` as soon
as the message that completes them arrives (an attempt as soon as the INVITE does). Event time
is the capture time in the packet, never the collector's clock.

Both transports listen on the same host and port. UDP: one datagram is one packet. TCP: packets
back to back, framed by their length field; garbage is dead-lettered and framing resumes at the
next ``HEP3`` (see :class:`services.ingest.hep.HepStream` for why the connection stays open).

Runs until SIGTERM or SIGINT, then flushes what the broker has not acknowledged and prints the
summary. Metrics on ``DIALGUARD_INGEST_METRICS_PORT`` (``--metrics-port``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
import time

from prometheus_client import Counter, start_http_server

from services.ingest.hep import PROTO_SIP, HepError, HepPacket, HepStream, Rejected, decode
from services.ingest.sink import EventSink
from services.ingest.sip_feed import SipFeed
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

HEP_PACKETS = Counter("dialguard_ingest_hep_packets_total",
                      "HEP packets (or rejected byte spans) received, by transport",
                      ["transport"])
HEP_CONNECTIONS = Counter("dialguard_ingest_hep_tcp_connections_total",
                          "TCP connections accepted by the HEP collector")


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

    def datagram(self, data: bytes) -> None:
        HEP_PACKETS.labels("udp").inc()
        try:
            packet = decode(data)
        except HepError as exc:
            self.sink.dead_letter(data, exc.reason, exc.detail)
            return
        self.packet(packet)

    def stream_item(self, item: HepPacket | Rejected) -> None:
        HEP_PACKETS.labels("tcp").inc()
        if isinstance(item, Rejected):
            self.sink.dead_letter(item.raw, item.reason, item.detail)
        else:
            self.packet(item)

    def packet(self, packet: HepPacket) -> None:
        try:
            self._packet(packet)
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
        log.warning("UDP receive error: %s", exc)


class _Tcp(asyncio.Protocol):
    def __init__(self, collector: HepCollector) -> None:
        self.collector = collector
        self.stream = HepStream()
        self.peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        HEP_CONNECTIONS.inc()
        self.peer = "%s:%s" % transport.get_extra_info("peername")[:2]
        log.info("HEP over TCP from %s", self.peer)

    def data_received(self, data: bytes) -> None:
        for item in self.stream.feed(data):
            self.collector.stream_item(item)

    def connection_lost(self, exc: Exception | None) -> None:
        tail = self.stream.close()
        if tail is not None:
            self.collector.stream_item(tail)
        log.info("HEP over TCP from %s closed%s", self.peer, f" ({exc})" if exc else "")


async def serve(collector: HepCollector, host: str, port: int,
                stop: asyncio.Event) -> None:
    """Listen on UDP and TCP ``host:port`` until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(collector),
                                                 local_addr=(host, port))
    udp_sock = udp.get_extra_info("socket")
    udp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
    tcp = await loop.create_server(lambda: _Tcp(collector), host, port)
    log.info("HEP collector listening on udp+tcp %s:%d (switch %s, setup timeout %.0fs, "
             "max dialogs %d, UDP receive buffer %d bytes)", host, port,
             collector.switch or "from capture id",
             collector.settings.sip_setup_timeout_s, collector.settings.sip_max_dialogs,
             udp_sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), TICK_S)
            except asyncio.TimeoutError:
                collector.tick()
    finally:
        udp.close()
        tcp.close()
        await tcp.wait_closed()


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
               "DIALGUARD_MAX_DURATION_S.")
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
