"""tshark: an SS7 capture -> the M3UA messages and MTP3 MSUs it carries, whatever the link.

tshark does the link work: the capture formats (pcap, pcapng), link layers, IP fragments, SCTP
(its chunks, and the reassembly of a user message fragmented over several DATA chunks), M2PA
(RFC 4165), M2UA (RFC 3331) and MTP2 (link types MTP2 and MTP2 with pseudo-header). Its M3UA
and MTP3 dissectors are switched off, so what those links carry comes out as raw bytes
(``data.data``): a whole M3UA message (decoded by :mod:`services.ingest.mtp3` in any of its
encodings) or an MTP3 MSU (SIO + routing label + ISUP). Which carrier a payload came in is the
protocol just before its ``data`` in ``frame.protocols``.

TSN analysis is off, because with it tshark withholds the payload of a chunk it takes for a
retransmission (the call tracker recognises repeated messages itself, and a TSN seen in the
other direction of a port-symmetric association, 2905 <-> 2905, is no retransmission).

A frame that holds SS7 but no message to read says why (:class:`Skip`): link status and fill-in
units, the first fragments of an SCTP message (read when the last arrives), SCCP-only SUA, SCTP
payloads of other protocols. Nothing that was captured vanishes without a count.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from typing import Iterator

from services.ingest.capture_files import clean_tshark_errors
from services.system import system_tool

#: SCTP payload protocol identifiers (IANA) of the SIGTRAN layers read here, and SUA.
PPID_M2UA, PPID_M3UA, PPID_SUA, PPID_M2PA = 2, 3, 4, 5
#: Carriers of a payload, named as in ``frame.protocols``.
M3UA, M2PA, M2UA, MTP2, MTP3 = "m3ua", "m2pa", "m2ua", "mtp2", "mtp3"
#: Wiretap encapsulation of frames that are a bare MTP3 MSU (link type MTP3).
ENCAP_MTP3 = 43
DATA = "data"

TSHARK_FIELDS = ("frame.number", "frame.time_epoch", "frame.protocols", "frame.encap_type",
                 "sctp.data_payload_proto_id", "sctp.data_e_bit", "data.data")
DISPLAY_FILTER = "sctp.data_payload_proto_id or m2pa or m2ua or mtp2 or frame.encap_type == 43"

# Why a frame that holds SS7 carries no message (ignored, counted under these names).
WHY_LINK_STATUS = "ss7_link_status"       # M2PA link status, M2UA management, FISU/LSSU
WHY_SCTP_FRAGMENT = "sctp_fragment"       # read when the message's last fragment comes
WHY_SUA = "sua_not_isup"                  # SUA carries SCCP, never ISUP
WHY_OTHER_PPID = "sctp_not_ss7"           # SCTP DATA of another protocol (Diameter, ...)
#: Link type MTP3 (bare MSUs, no MTP2): with tshark's MTP3 dissector off its frames come out
#: with no bytes at all, so they are counted, not read (see the README's capture table).
WHY_MTP3_LINKTYPE = "mtp3_linktype_unread"


@dataclass(frozen=True, slots=True)
class Payload:
    """One M3UA message (``carrier`` m3ua) or MTP3 MSU (every other carrier)."""

    frame: int
    ts: float
    carrier: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Skip:
    frame: int
    why: str


def tshark_command(tshark: str, path: str) -> list[str]:
    cmd = [tshark, "-r", path, "-n", "-Y", DISPLAY_FILTER,
           "--disable-protocol", "m3ua", "--disable-protocol", "mtp3",
           "-o", "sctp.tsn_analysis:FALSE", "-o", "sctp.reassembly:TRUE",
           "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,"]
    for name in TSHARK_FIELDS:
        cmd += ["-e", name]
    return cmd


def carriers(protocols: str, encap: int | None) -> list[str]:
    """The carrier of each ``data`` in a ``frame.protocols`` string, in order."""
    out = []
    last = MTP3 if encap == ENCAP_MTP3 else ""
    for token in protocols.split(":"):
        if token == DATA:
            out.append(last)
        else:
            last = M3UA if token == "sctp" else token
    return out


def payloads_from_fields(line: str) -> list[Payload | Skip]:
    """One line of :func:`tshark_command` output -> the frame's payloads, or why it has none."""
    parts = line.rstrip("\n").split("\t")
    parts += [""] * (len(TSHARK_FIELDS) - len(parts))
    frame_text, ts_text, protocols, encap_text, ppids_text, ends_text, data_text = parts[:7]
    frame, ts = int(frame_text), float(ts_text)
    ppids = {int(p) for p in ppids_text.split(",") if p}
    blobs = [bytes.fromhex(h) for h in data_text.split(",") if h]
    kinds = carriers(protocols, int(encap_text) if encap_text.isdigit() else None)
    out: list[Payload | Skip] = []
    for kind, blob in zip(kinds, blobs):
        if kind == M3UA and PPID_M3UA not in ppids:
            out.append(Skip(frame, WHY_OTHER_PPID))
        elif kind in (M3UA, M2PA, M2UA, MTP2, MTP3):
            out.append(Payload(frame, ts, kind, blob))
        else:
            out.append(Skip(frame, WHY_OTHER_PPID))
    if out:
        return out
    if encap_text == str(ENCAP_MTP3):
        return [Skip(frame, WHY_MTP3_LINKTYPE)]
    if "0" in ends_text.split(","):
        return [Skip(frame, WHY_SCTP_FRAGMENT)]
    if PPID_SUA in ppids or ":sua" in protocols:
        return [Skip(frame, WHY_SUA)]
    if ppids and not ppids & {PPID_M2UA, PPID_M3UA, PPID_M2PA} and not any(
            p in protocols for p in (M2PA, M2UA)):
        return [Skip(frame, WHY_OTHER_PPID)]
    return [Skip(frame, WHY_LINK_STATUS)]


def read_payloads(path: str, tshark: str | None = None) -> Iterator[Payload | Skip]:
    """Stream the capture's SS7 payloads; RuntimeError if tshark cannot read it to the end."""
    cmd = tshark_command(tshark or system_tool("tshark"), path)
    # stderr to a file: a capture full of malformed packets makes tshark warn a lot, and a
    # full stderr pipe nobody reads would stall it.
    with tempfile.TemporaryFile("w+") as errors:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True,
                              bufsize=1) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip():
                    yield from payloads_from_fields(line)
            code = proc.wait()
        errors.seek(0)
        err = errors.read()
    if code != 0:
        raise RuntimeError(f"tshark could not read all of {path} (exit {code}): "
                           f"{clean_tshark_errors(err)}")
