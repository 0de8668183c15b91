"""SIP messages with capture times -> call events, by following each dialog through its Call-ID.

Pure (no sockets, no Kafka, no wall clock): the HEP collector and the pcap replay both parse each
SIP payload with :func:`parse_sip` (sipmessage does the SIP grammar) and hand it to one
:class:`DialogTracker`, which answers with the events it completes, or with why the message
carries none. Time is always the capture time of the messages, so a replayed capture yields the
same events as the live traffic did.

Mapping (DESIGN.md): INVITE -> ``attempt`` at once (a switch must be able to stop a robot while
it is still dialing); 2xx to the INVITE -> ``answer``; BYE from either side after the answer ->
``release`` with ``duration_s`` = BYE time - answer time; 4xx-6xx final to the INVITE -> ``fail``
with the code; CANCEL (or a BYE on an early dialog) before the answer -> ``fail`` 487 at once,
and the 487 that follows is not counted again.

Retransmissions and duplicates must not count twice: a tracer on a proxy mirrors every message
twice (received and relayed) and UDP peers retransmit. A request is known by (method, CSeq) and a
response by (status, CSeq, method) within its dialog; seeing one again is ignored as
``retransmission``.

What the tracker chose where the issue left a choice (README "SIP and HEP ingest"):

* 401/407 to an INVITE is an authentication challenge, not a failure: the dialog stays open for
  the re-sent INVITE (same Call-ID, next CSeq), which is not a second attempt.
* 3xx closes the dialog without an event (the redirected call is a new INVITE).
* An INVITE never answered and never failed (capture lost the final response) expires after
  ``unanswered_timeout_s`` *without* an event: the attempt was counted already, and inventing a
  failure code would feed the failure-class features with a guess.
* An answered call without a BYE after ``max_call_s`` is released with ``duration_s`` =
  ``max_call_s``: it lasted at least that long, and reporting a long call errs on the side of the
  caller (a missed BYE must never look like a robot's short call).
* At most ``max_dialogs`` dialogs are held; beyond that the least recently active one is evicted
  without an event and counted (``evicted``).
* Ended dialogs linger ``linger_s`` so that late retransmissions of their final messages are
  recognised instead of looking like unknown dialogs.
* The Identity header's PASSporT ``attest`` claim is read *without* verifying the signature or
  the certificate: dialguard is not the verification service, it only records what the call
  claimed (a verification service on the switch is where the signature is checked).
* ``trunk`` is the trunk the INVITE entered through, by the same rule as the switch
  (``route[TRUNK]`` of services/kamailio/dialguard.cfg), so trunk decisions made from these
  events match the calls the switch screens: the RFC 4904 originating trunk group (``tgrp``) in
  the Contact URI (user part or URI parameter) when the INVITE comes from a peer trusted to
  name its trunk groups (``DIALGUARD_SIP_TGRP_PEERS``), else the source address the capture
  gives (:func:`trunk_of`). A caller's own Contact is whatever it wants it to be: were its tgrp
  believed from anyone, a robot sending straight to the switch would show a fresh trunk group
  on every call, as it shows a fresh number.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field

import orjson
from sipmessage import Address, CSeq, Message, Request, URI

from services.ingest.sip_text import tolerant_sip
from streams.schema import ATTESTATIONS, InvalidEvent, SignalingEvent

PROTO = "sip"
#: Default timers (the settings in services/settings.py override them).
UNANSWERED_TIMEOUT_S = 300.0  # > Timer C (3 min): a proxy gives up on an unanswered INVITE
MAX_CALL_S = 14_400.0
LINGER_S = 32.0  # 64*T1: how long a UDP peer may still retransmit a final message
MAX_DIALOGS = 100_000

# Why a message yields no event (bounded set: a metric label).
WHY_RETRANSMISSION = "retransmission"
WHY_PROVISIONAL = "provisional"
WHY_ACK = "ack"
WHY_REINVITE = "reinvite"
WHY_AUTH = "auth_challenge"
WHY_REDIRECT = "redirect"
WHY_UNKNOWN_DIALOG = "unknown_dialog"
WHY_AFTER_END = "after_end"
WHY_IN_DIALOG = "in_dialog_request"
WHY_NOT_A_CALL = "not_a_call"
WHY_NON_INVITE_RESPONSE = "non_invite_response"
WHY_KEEPALIVE = "keepalive"

# Dead-letter reasons for SIP that cannot be used.
REASON_SIP_PARSE = "sip_parse_error"
REASON_NO_CALLER = "no_caller"
REASON_NO_CALLEE = "no_callee"

#: Requests that belong to an established (or early) dialog and say nothing about the outcome.
IN_DIALOG_METHODS = frozenset({"PRACK", "UPDATE", "INFO", "REFER", "NOTIFY"})
CODE_CANCELLED = 487
_TRYING, _ANSWERED, _ENDED = "trying", "answered", "ended"


class SipError(InvalidEvent):
    """A SIP payload that cannot be used; ``reason`` is the DLQ reason."""


@dataclass(slots=True)
class SipMessage:
    """The few facts of one SIP message the tracker needs, plus where and when it was seen."""

    ts: float
    call_id: str
    cseq: int
    cseq_method: str
    method: str | None = None  # requests
    status: int | None = None  # responses
    to_tag: str | None = None
    caller: str = ""  # INVITE only: P-Asserted-Identity user, else From user
    callee: str = ""  # INVITE only: Request-URI user, else To user
    attest: str | None = None
    trunk: str | None = None  # INVITE: trunk_of(); else where it came from (the peer's IP)
    switch: str | None = None  # who captured it


def _user(uri_text: str) -> str:
    """User part of a SIP/SIPS/TEL URI or name-addr, without URI parameters ('' if none)."""
    text = uri_text.strip()
    try:
        uri = Address.parse(text).uri if ("<" in text or " " in text) else URI.parse(text)
    except ValueError:
        # sipmessage refuses a whole name-addr for one odd byte in the display name or a
        # parameter (a replacement character after tolerant_sip): read the URI alone.
        inner = text[text.find("<") + 1:text.find(">")] if "<" in text and ">" in text \
            else text.split(";", 1)[0]
        try:
            uri = URI.parse(inner.strip())
        except ValueError:
            return ""
    return (uri.user or "").split(";", 1)[0]


def passport_attest(identity: str) -> str | None:
    """The ``attest`` claim of a SHAKEN PASSporT in an Identity header value, unverified.

    The header is ``<jwt>;info=<...>;alg=...;ppt=shaken`` and the JWT is
    ``base64url(header).base64url(payload).signature``; anything unreadable gives None.
    """
    token = identity.strip().split(";", 1)[0].strip().strip("<>")
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return None
    attest = claims.get("attest") if isinstance(claims, dict) else None
    return attest if attest in ATTESTATIONS else None


def is_keepalive(payload: bytes) -> bool:
    """RFC 5626 CRLF keepalives (and empty payloads) that tracers sometimes mirror."""
    return not payload.strip(b"\r\n")


#: RFC 4904 trunk group parameter.
TGRP = "tgrp"


def contact_tgrp(contact: str) -> str | None:
    """The RFC 4904 trunk group of a Contact header value, or None.

    An originating switch names the trunk group a call left it on in the Contact URI: in the
    user part (``<sip:+8613800138000;tgrp=TG-1;trunk-context=peer.example@host>``, RFC 4904's
    form) or, as many trunks do, as a URI parameter (``<sip:8613800138000@host;tgrp=TG-1>``).
    The user part wins, as in dialguard.cfg; an empty ``tgrp`` counts as none.
    """
    text = contact.strip()
    if "<" in text:
        text = text[text.find("<") + 1:].split(">", 1)[0]
    else:
        text = text.split(",", 1)[0]
    text = text.split("?", 1)[0]
    _, colon, rest = text.partition(":")
    if not colon:
        return None
    user, at, hostpart = rest.rpartition("@")
    candidates = ([user.split(";")[1:]] if at else []) + [hostpart.split(";")[1:]]
    for params in candidates:
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == TGRP and value.strip():
                return value.strip()
    return None


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TgrpPeers:
    """Source networks whose Contact ``tgrp`` is believed (interconnects and trunking gateways
    that name their trunk groups); from anywhere else the trunk is the source address.

    The same list goes to the switch (``TGRP_PEERS`` of dialguard.cfg, checked with ipops'
    ``is_in_subnet``), so the switch and the ingest name a call's trunk alike.
    """

    networks: tuple[IpNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "TgrpPeers":
        """``"10.1.0.0/16, 192.0.2.7"`` -> networks; ValueError names a bad entry."""
        nets = []
        for item in (t.strip() for t in text.split(",")):
            if not item:
                continue
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"DIALGUARD_SIP_TGRP_PEERS: {item!r} is not an IP address or "
                                 "network") from None
        return cls(tuple(nets))

    def trusts(self, source: str | None) -> bool:
        if not source or not self.networks:
            return False
        try:
            addr = ipaddress.ip_address(source.strip("[]"))
        except ValueError:
            return False
        return any(addr in net for net in self.networks)

    def __str__(self) -> str:
        return ",".join(str(n) for n in self.networks)


NO_TGRP_PEERS = TgrpPeers()


def trunk_of(contact: str | None, source: str | None,
             peers: TgrpPeers = NO_TGRP_PEERS) -> str | None:
    """Trunk of an INVITE: its Contact's ``tgrp`` (:func:`contact_tgrp`) when ``source`` is a
    trusted peer, else ``source`` (the address the request came from: HEP source IP, pcap
    ``ip.src``)."""
    tgrp = contact_tgrp(contact) if contact and peers.trusts(source) else None
    return tgrp or source


def parse_sip(payload: bytes, ts: float, trunk: str | None = None,
              switch: str | None = None, tgrp_peers: TgrpPeers = NO_TGRP_PEERS) -> SipMessage:
    """One SIP message (bytes as captured) -> :class:`SipMessage`, or :class:`SipError`;
    ``trunk`` is where it came from, replaced on an INVITE by :func:`trunk_of`. Bare LF,
    bytes that are not UTF-8 and unbracketed IPv6 hosts are repaired first
    (:func:`services.ingest.sip_text.tolerant_sip`): a call is never lost to them."""
    try:
        msg = Message.parse(tolerant_sip(payload))
        call_id = msg.headers.get("Call-ID")
        cseq_text = msg.headers.get("CSeq")
        if not call_id:
            raise SipError(REASON_SIP_PARSE, "no Call-ID header")
        if not cseq_text:
            raise SipError(REASON_SIP_PARSE, "no CSeq header")
        cseq = CSeq.parse(cseq_text)
        to = msg.headers.get("To") or ""
        to_tag = _param(to, "tag")
        if isinstance(msg, Request):
            out = SipMessage(ts=ts, call_id=call_id, cseq=cseq.sequence,
                             cseq_method=cseq.method.upper(), method=msg.method.upper(),
                             to_tag=to_tag, trunk=trunk, switch=switch)
            if out.method == "INVITE":
                _identify(msg, out, to, tgrp_peers)
            return out
        return SipMessage(ts=ts, call_id=call_id, cseq=cseq.sequence,
                          cseq_method=cseq.method.upper(), status=msg.code, to_tag=to_tag,
                          trunk=trunk, switch=switch)
    except SipError:
        raise
    except (ValueError, KeyError, IndexError) as exc:  # UnicodeDecodeError is a ValueError
        first = payload.split(b"\r\n", 1)[0][:80]
        raise SipError(REASON_SIP_PARSE, f"{type(exc).__name__}: {exc} (first line {first!r})") \
            from None


def _param(header: str, name: str) -> str | None:
    """A header parameter after the URI (``;tag=...``), without parsing the whole address."""
    tail = header.rsplit(">", 1)[-1] if ">" in header else header
    for part in tail.split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == name:
            return value.strip() or None
    return None


def _identify(msg: Request, out: SipMessage, to: str, tgrp_peers: TgrpPeers) -> None:
    """Caller, callee and attestation of an INVITE."""
    for pai in msg.headers.getlist("P-Asserted-Identity"):
        for one in pai.split(","):
            out.caller = _user(one)
            if out.caller:
                break
        if out.caller:
            break
    if not out.caller:
        out.caller = _user(msg.headers.get("From") or "")
    out.callee = (msg.uri.user or "").split(";", 1)[0] or _user(to)
    if not out.caller:
        raise SipError(REASON_NO_CALLER, "INVITE without a user in P-Asserted-Identity or From")
    if not out.callee:
        raise SipError(REASON_NO_CALLEE, "INVITE without a user in the Request-URI or To")
    out.trunk = trunk_of(msg.headers.get("Contact"), out.trunk, tgrp_peers)
    for identity in msg.headers.getlist("Identity"):
        out.attest = passport_attest(identity)
        if out.attest:
            break


@dataclass(slots=True)
class Dialog:
    call_id: str
    caller: str
    callee: str
    attest: str | None
    trunk: str | None
    switch: str | None
    last_ts: float
    state: str = _TRYING
    answer_ts: float = 0.0
    seen: set[tuple] = field(default_factory=set)

    def event(self, kind: str, ts: float, code: int | None = None,
              duration_s: float | None = None) -> SignalingEvent:
        return SignalingEvent(ts=ts, proto=PROTO, kind=kind, call_id=self.call_id,
                              caller=self.caller, callee=self.callee, code=code,
                              duration_s=duration_s, trunk=self.trunk, switch=self.switch,
                              attest=self.attest)


@dataclass(slots=True)
class Fed:
    """What one message did: the events it completed, or why it completed none."""

    events: list[SignalingEvent] = field(default_factory=list)
    why: str | None = None


@dataclass
class TrackerStats:
    opened: int = 0
    evicted: int = 0
    expired_unanswered: int = 0
    expired_answered: int = 0


class DialogTracker:
    """Open dialogs by Call-ID, in least-recently-active order, at most ``max_dialogs``."""

    def __init__(self, unanswered_timeout_s: float = UNANSWERED_TIMEOUT_S,
                 max_call_s: float = MAX_CALL_S, max_dialogs: int = MAX_DIALOGS,
                 linger_s: float = LINGER_S) -> None:
        if max_dialogs < 1:
            raise ValueError("max_dialogs must be at least 1")
        self.unanswered_timeout_s = unanswered_timeout_s
        self.max_call_s = max_call_s
        self.max_dialogs = max_dialogs
        self.linger_s = linger_s
        self.dialogs: OrderedDict[str, Dialog] = OrderedDict()
        self.stats = TrackerStats()

    def __len__(self) -> int:
        return len(self.dialogs)

    @property
    def open_calls(self) -> int:
        """Dialogs not ended yet (ringing or answered)."""
        return sum(1 for d in self.dialogs.values() if d.state != _ENDED)

    def feed(self, msg: SipMessage) -> Fed:
        if msg.method is not None:
            return self._request(msg)
        return self._response(msg)

    # -- requests -------------------------------------------------------------------------
    def _request(self, msg: SipMessage) -> Fed:
        method = msg.method
        if method == "ACK":
            self._touch(msg)
            return Fed(why=WHY_ACK)
        if method != "INVITE" and method not in ("CANCEL", "BYE"):
            self._touch(msg)
            return Fed(why=WHY_IN_DIALOG if method in IN_DIALOG_METHODS and msg.to_tag
                       else WHY_NOT_A_CALL)
        dialog = self.dialogs.get(msg.call_id)
        if dialog is None:
            if method != "INVITE" or msg.to_tag:
                return Fed(why=WHY_UNKNOWN_DIALOG)  # began before we listened, or evicted
            return Fed([self._open(msg).event("attempt", msg.ts)])
        self._touch(msg, dialog)
        key = (method, msg.cseq)
        if key in dialog.seen:
            return Fed(why=WHY_RETRANSMISSION)
        dialog.seen.add(key)
        if method == "INVITE":
            if dialog.state == _ENDED:
                return Fed(why=WHY_AFTER_END)
            # A re-INVITE in the call, or the INVITE re-sent with credentials after a 401/407.
            return Fed(why=WHY_REINVITE if dialog.state == _ANSWERED or msg.to_tag else WHY_AUTH)
        if dialog.state == _TRYING:  # CANCEL, or BYE on an early dialog
            dialog.state = _ENDED
            return Fed([dialog.event("fail", msg.ts, code=CODE_CANCELLED)])
        if method == "BYE" and dialog.state == _ANSWERED:
            dialog.state = _ENDED
            duration = max(0.0, msg.ts - dialog.answer_ts)
            return Fed([dialog.event("release", msg.ts, duration_s=round(duration, 6))])
        return Fed(why=WHY_AFTER_END)

    # -- responses ------------------------------------------------------------------------
    def _response(self, msg: SipMessage) -> Fed:
        status = msg.status or 0
        if msg.cseq_method != "INVITE":
            self._touch(msg)
            return Fed(why=WHY_NON_INVITE_RESPONSE)
        if status < 200:
            self._touch(msg)
            return Fed(why=WHY_PROVISIONAL)
        dialog = self.dialogs.get(msg.call_id)
        if dialog is None:
            return Fed(why=WHY_UNKNOWN_DIALOG)
        self._touch(msg, dialog)
        key = (status, msg.cseq, "INVITE")
        if key in dialog.seen:
            return Fed(why=WHY_RETRANSMISSION)
        dialog.seen.add(key)
        if dialog.state == _ANSWERED:
            return Fed(why=WHY_REINVITE)  # the answer to a re-INVITE (or a forked 2xx)
        if dialog.state == _ENDED:
            return Fed(why=WHY_AFTER_END)  # e.g. the 487 after a CANCEL we counted
        if status < 300:
            dialog.state = _ANSWERED
            dialog.answer_ts = msg.ts
            return Fed([dialog.event("answer", msg.ts, code=status)])
        if status < 400:
            dialog.state = _ENDED
            return Fed(why=WHY_REDIRECT)
        if status in (401, 407):
            return Fed(why=WHY_AUTH)
        dialog.state = _ENDED
        return Fed([dialog.event("fail", msg.ts, code=status)])

    # -- bookkeeping ----------------------------------------------------------------------
    def _open(self, msg: SipMessage) -> Dialog:
        while len(self.dialogs) >= self.max_dialogs:
            self.dialogs.popitem(last=False)
            self.stats.evicted += 1
        dialog = Dialog(call_id=msg.call_id, caller=msg.caller, callee=msg.callee,
                        attest=msg.attest, trunk=msg.trunk, switch=msg.switch,
                        last_ts=msg.ts, seen={("INVITE", msg.cseq)})
        self.dialogs[msg.call_id] = dialog
        self.stats.opened += 1
        return dialog

    def _touch(self, msg: SipMessage, dialog: Dialog | None = None) -> None:
        dialog = dialog or self.dialogs.get(msg.call_id)
        if dialog is not None:
            dialog.last_ts = max(dialog.last_ts, msg.ts)
            self.dialogs.move_to_end(msg.call_id)

    def expire(self, now: float) -> list[SignalingEvent]:
        """Drop dialogs whose time is up at event time ``now``; returns the releases this makes.

        A full scan: deadlines depend on the state, so the activity order alone cannot say where
        to stop. Call it every few seconds, not per message.
        """
        events: list[SignalingEvent] = []
        for call_id in list(self.dialogs):
            d = self.dialogs[call_id]
            if d.state == _TRYING and now - d.last_ts > self.unanswered_timeout_s:
                self.stats.expired_unanswered += 1
            elif d.state == _ANSWERED and now - d.answer_ts > self.max_call_s:
                self.stats.expired_answered += 1
                events.append(d.event("release", d.answer_ts + self.max_call_s,
                                      duration_s=self.max_call_s))
            elif not (d.state == _ENDED and now - d.last_ts > self.linger_s):
                continue
            del self.dialogs[call_id]
        return events
