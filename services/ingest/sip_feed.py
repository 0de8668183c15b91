"""Glue between a SIP source (HEP collector, pcap replay) and the :class:`EventSink`.

Both sources hand over the same thing: one captured SIP payload, its capture time, the bytes to
dead-letter if it is unusable (the whole HEP packet, or the SIP payload of a pcap frame), and
where it came from. Every payload ends up counted exactly once: as events, as ignored with a
why, or as a dead letter with a reason. Events are checked with the worker's own validator
before they leave, so what the worker would reject (an unparsable caller, a timestamp in the
future) is dead-lettered here together with the SIP message that explains it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

from services.ingest.sip_dialogs import (NO_TGRP_PEERS, WHY_KEEPALIVE, DialogTracker, SipError,
                                         TgrpPeers, is_keepalive, parse_sip)
from streams.schema import EventValidator, SignalingEvent

if TYPE_CHECKING:
    from services.ingest.sink import EventSink
    from services.settings import Settings

#: Dialog expiry runs at most this often, in event-time seconds (it scans every dialog).
EXPIRE_EVERY_S = 5.0

SIP_DIALOGS_OPEN = Gauge("dialguard_ingest_sip_dialogs", "SIP dialogs held by the tracker "
                         "(ringing, answered, or ended and lingering for retransmissions)",
                         ["source"])
SIP_DIALOGS_DROPPED = Counter("dialguard_ingest_sip_dialogs_dropped_total",
                              "SIP dialogs forgotten before they ended: evicted (too many open) "
                              "or expired (unanswered past the setup timeout, answered past "
                              "the maximum duration)", ["source", "why"])


def tracker_for(settings: "Settings") -> DialogTracker:
    return DialogTracker(unanswered_timeout_s=settings.sip_setup_timeout_s,
                         max_call_s=settings.max_duration_s,
                         max_dialogs=settings.sip_max_dialogs)


class SipFeed:
    def __init__(self, tracker: DialogTracker, sink: "EventSink",
                 validator: EventValidator, tgrp_peers: TgrpPeers = NO_TGRP_PEERS) -> None:
        self.tracker = tracker
        self.tgrp_peers = tgrp_peers
        self.sink = sink
        self.validator = validator
        self.latest_ts = 0.0
        self._expired_at = 0.0
        self._dropped = (0, 0, 0)

    @classmethod
    def for_settings(cls, settings: "Settings", sink: "EventSink") -> "SipFeed":
        return cls(tracker_for(settings), sink, EventValidator.of(settings),
                   TgrpPeers.parse(settings.sip_tgrp_peers))

    def payload(self, payload: bytes, ts: float, raw: bytes, trunk: str | None = None,
                switch: str | None = None, origin: str = "") -> None:
        """One captured SIP message; ``raw`` is what is dead-lettered if it cannot be used,
        ``origin`` (e.g. file and frame number) prefixes the dead letter's detail."""
        if is_keepalive(payload):
            self.sink.ignore(WHY_KEEPALIVE)
            return
        try:
            message = parse_sip(payload, ts, trunk=trunk, switch=switch,
                                tgrp_peers=self.tgrp_peers)
        except SipError as exc:
            self.sink.dead_letter(raw, exc.reason, f"{origin}: {exc.detail}" if origin
                                  else exc.detail)
            return
        fed = self.tracker.feed(message)
        if fed.why is not None:
            self.sink.ignore(fed.why)
        for ev in fed.events:
            self._publish(ev, raw)
        if ts > self.latest_ts:
            self.latest_ts = ts
        if self.latest_ts - self._expired_at >= EXPIRE_EVERY_S:
            self.expire(self.latest_ts)

    def expire(self, now: float) -> None:
        """Forget dialogs whose time is up at event time ``now`` (publishes forced releases)."""
        self._expired_at = now
        for ev in self.tracker.expire(now):
            self._publish(ev, ev.encode())
        self._update_metrics()

    def _publish(self, ev: SignalingEvent, raw: bytes) -> None:
        self.sink.checked_event(ev, self.validator, raw, f"SIP {ev.kind} of call {ev.call_id}")

    def _update_metrics(self) -> None:
        source = self.sink.source
        stats = self.tracker.stats
        now = (stats.evicted, stats.expired_unanswered, stats.expired_answered)
        for why, before, after in zip(("evicted", "expired_unanswered", "expired_answered"),
                                      self._dropped, now):
            if after > before:
                SIP_DIALOGS_DROPPED.labels(source, why).inc(after - before)
        self._dropped = now
        SIP_DIALOGS_OPEN.labels(source).set(len(self.tracker))

    def summary(self) -> str:
        s = self.tracker.stats
        return (f"{s.opened} SIP dialogs seen, {self.tracker.open_calls} still open, "
                f"{s.evicted} evicted, {s.expired_unanswered} expired unanswered, "
                f"{s.expired_answered} released at the maximum duration")
