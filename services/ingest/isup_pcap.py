"""``dialguard ingest isup-pcap``: ISUP from pcap / pcapng captures of any SS7 link.

Layers and who decodes them:

* capture file, link layer, IP, SCTP (with the reassembly of fragmented messages), M2PA, M2UA,
  MTP2: ``tshark`` (:mod:`services.ingest.ss7_links`), which hands over M3UA messages and MTP3
  MSUs as raw bytes, with the frame time;
* M3UA in RFC 4666 and the draft encodings, MTP3 routing labels (ITU-T or ANSI, per
  ``--standard``): :mod:`services.ingest.mtp3`; M3UA management is counted and skipped, and so
  are MTP3 users other than ISUP (SCCP, ...);
* ISUP: ITU-T with pycrate (:mod:`services.ingest.isup_codec`), ANSI with the project's own
  reader (:mod:`services.ingest.isup_ansi`).

IAM / ACM / ANM / CON / REL / RLC then go through the same call tracker as probe records
(:mod:`services.ingest.isup_calls`), with the frame time as event time. An M3UA message or MSU
that does not decode goes to the DLQ (its bytes, the file and frame number in ``dlq.detail``);
a frame that holds SS7 but no message (link status, a first SCTP fragment, SUA) is counted
and skipped with why. Every file named is read; each gets a line of its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Iterator

from services.ingest.capture_files import FileReport, exit_status, read_all
from services.ingest.isup_ansi import decode_ansi_isup
from services.ingest.isup_calls import IsupFeed, IsupMessage, tracker_for
from services.ingest.isup_codec import (REASON_BAD_ISUP, DecodeError, IsupParser,
                                        address_signals, decode_isup, q850_cause)
from services.ingest.mtp3 import (ANSI, ITU, REASON_BAD_M3UA, REASON_BAD_MTP3, STANDARDS,
                                  Transfer, decode_msu)
from services.ingest.mtp3 import decode_m3ua as decode_m3ua_transfer
from services.ingest import replay_guard
from services.ingest.sink import replay_sink
from services.ingest.ss7_links import M3UA, Payload, Skip, read_payloads
from services.settings import Settings
from streams.schema import EventValidator

SOURCE = "isup-pcap"

#: MTP3 service indicator of ISUP (Q.704 14.2.1).
SI_ISUP = 5

WHY_M3UA_MGMT = "m3ua_management"
WHY_NOT_ISUP = "mtp3_not_isup"
WHY_ISUP_OTHER = "isup_other"

__all__ = ["DecodeError", "IsupParser", "REASON_BAD_ISUP", "REASON_BAD_M3UA",
           "REASON_BAD_MTP3", "address_signals", "decode_isup", "decode_m3ua", "q850_cause"]

#: ISUP reader per standard: (user data, frame time, OPC, DPC, switch) -> message or None.
IsupDecoder = Callable[[bytes, float, int, int, str | None], IsupMessage | None]
DECODERS: dict[str, IsupDecoder] = {ITU: decode_isup, ANSI: decode_ansi_isup}


def decode_m3ua(payload: bytes, standard: str = ITU) -> tuple[int, int, int, bytes] | None:
    """(OPC, DPC, service indicator, user data) of an M3UA DATA message (RFC 4666 or a
    draft); None for the other M3UA classes; DecodeError if it is not M3UA."""
    transfer = decode_m3ua_transfer(payload, standard)
    return None if transfer is None else (transfer.opc, transfer.dpc, transfer.si,
                                           transfer.data)


def transfer_of(item: Payload, standard: str) -> Transfer | None:
    """The MTP3 user message a payload carries (None: M3UA management)."""
    if item.carrier == M3UA:
        return decode_m3ua_transfer(item.data, standard)
    return decode_msu(item.data, standard)


# -- driver ---------------------------------------------------------------------------------
def ingest_payloads(items: Iterator[Payload | Skip], feed: IsupFeed, label: str,
                    switch: str | None = None, standard: str = ITU,
                    report: FileReport | None = None) -> None:
    """Every payload into ``feed``: an event, a count with why, or a dead letter."""
    sink = feed.sink
    decode = DECODERS[standard]
    frames: set[int] = set()
    for item in items:
        frames.add(item.frame)
        if isinstance(item, Skip):
            sink.ignore(item.why)
            continue
        where = f"{label} frame {item.frame} ({item.carrier})"
        try:
            transfer = transfer_of(item, standard)
            if transfer is None:
                sink.ignore(WHY_M3UA_MGMT)
                continue
            if transfer.si != SI_ISUP:
                sink.ignore(WHY_NOT_ISUP)
                continue
            message = decode(transfer.data, item.ts, transfer.opc, transfer.dpc, switch)
        except DecodeError as exc:
            sink.dead_letter(item.data, exc.reason, f"{where}: {exc.detail}")
            continue
        if message is None:
            sink.ignore(WHY_ISUP_OTHER)
            continue
        feed.message(message, item.data, where)
    if report is not None:
        report.frames = len(frames)
        if not frames:
            report.notes.append("no SS7 in it (no SCTP DATA, M2PA, M2UA or MTP2 frames)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    sink = replay_sink(settings, SOURCE, args.again)
    tracker = tracker_for(settings)
    feed = IsupFeed(tracker, sink, EventValidator.of(settings))

    def read(path: Path, report: FileReport) -> None:
        ingest_payloads(read_payloads(str(path)), feed, path.name, args.switch, args.standard,
                        report)

    try:
        reports = read_all(args.files, sink, read, "SS7 frames")
    finally:
        print(f"[ingest] {tracker.summary()}", file=sys.stderr, flush=True)
        sink.close()
    return exit_status(reports)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "isup-pcap", help="ISUP from pcap/pcapng captures of SS7 links (M3UA, M2PA, M2UA, MTP2)",
        description="Replay ISUP call signalling (IAM, ACM, ANM, CON, REL, RLC) from pcap or "
                    "pcapng captures of SS7 links to signaling.events: SIGTRAN (M3UA in RFC "
                    "4666 and the older draft encodings, M2PA, M2UA, over SCTP, fragmented "
                    "messages reassembled) and MTP2 link captures. tshark reads the capture "
                    "and the links; M3UA and MTP3 are decoded here, ITU-T ISUP by pycrate, "
                    "ANSI ISUP by dialguard's own reader. The frame time is the event time; "
                    "a call is the circuit (OPC, DPC, CIC) in either direction.",
        epilog="Each file gets a line: SS7 frames read, events, dead letters and skips with "
               "their reasons. Messages that do not decode go to signaling.events.dlq with "
               "the reason (bad_m3ua, bad_mtp3, bad_isup, bad_number) and the file and frame "
               "number. Counted and skipped: M3UA management, link status units, first "
               "fragments of SCTP messages, SUA, other SCTP payloads, MTP3 users other than "
               "ISUP, other ISUP messages. A folder is read for its capture files. Exit "
               "status 1 if a file could not be read (missing, empty, not a capture, cut).")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="pcap or pcapng capture(s), or folders of them; every one is read")
    p.add_argument("--switch", default=None, help="switch name to put on the events "
                   "(default pc-<DPC of the IAM>: the exchange that received the call)")
    p.add_argument("--standard", choices=STANDARDS, default=ITU,
                   help="the network's SS7 standard: MTP3 routing label and ISUP layout "
                        "(ITU-T: 14-bit point codes; ANSI: 24-bit, T1.113 ISUP); default itu")
    replay_guard.add_arguments(p)
    p.set_defaults(ingest_func=run)
