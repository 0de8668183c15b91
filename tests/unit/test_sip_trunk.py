"""The trunk a SIP call entered through, as the ingest names it: the same rule as the switch
(dialguard.cfg route[TRUNK]), or trunk decisions built from events would match no call."""

from __future__ import annotations

import pytest

from services.ingest.sip_dialogs import (DialogTracker, TgrpPeers, contact_tgrp, parse_sip,
                                        trunk_of)
from services.ingest.sip_feed import SipFeed
from services.settings import Settings
from tests.unit.test_sip_dialogs import T0, request

PEERS = TgrpPeers.parse("10.0.0.0/24, 192.0.2.7, 2001:db8::/32")


@pytest.mark.parametrize("contact,tgrp", [
    # RFC 4904: the trunk group in the user part of the Contact URI.
    ("<sip:+8613800138000;tgrp=TG-1;trunk-context=peer.example@10.0.0.1;user=phone>", "TG-1"),
    # As a URI parameter (common on SIP trunks).
    ("<sip:8613800138000@10.0.0.1:5060;transport=udp;tgrp=ent-7>", "ent-7"),
    # User part wins over a URI parameter, as in the cfg.
    ("<sip:1;tgrp=user-side@h;tgrp=uri-side>", "user-side"),
    ('"Robot" <sip:1@h;TGRP=Upper>;expires=60', "Upper"),
    ("sip:1;tgrp=bare@10.0.0.1", "bare"),
    ("<tel:+8613800138000;tgrp=tg9;trunk-context=+86>", "tg9"),
    # None: no tgrp, an empty one, a header parameter (outside the URI), garbage.
    ("<sip:8613800138000@10.0.0.1:5060>", None),
    ("<sip:1;tgrp=@h>", None),
    ("<sip:1@h>;tgrp=header-param", None),
    ("*", None),
    ("", None),
])
def test_contact_tgrp(contact: str, tgrp: str | None) -> None:
    assert contact_tgrp(contact) == tgrp


def test_trunk_falls_back_to_the_source_address() -> None:
    assert trunk_of("<sip:1@h;tgrp=tg-a>", "10.0.0.9", PEERS) == "tg-a"
    assert trunk_of("<sip:1@h>", "10.0.0.9", PEERS) == "10.0.0.9"
    assert trunk_of(None, "10.0.0.9", PEERS) == "10.0.0.9"
    assert trunk_of(None, None, PEERS) is None


def test_only_trusted_peers_name_their_trunk_group() -> None:
    """A caller's own Contact says what it likes: believed from anyone, a robot sending
    straight to the switch would show a fresh tgrp per call as it shows a fresh number."""
    contact = "<sip:1;tgrp=tg-a@h>"
    assert trunk_of(contact, "192.0.2.7", PEERS) == "tg-a"
    assert trunk_of(contact, "2001:db8::5", PEERS) == "tg-a"
    assert trunk_of(contact, "192.0.2.8", PEERS) == "192.0.2.8"
    assert trunk_of(contact, "10.0.0.9") == "10.0.0.9"  # default: nobody trusted
    assert trunk_of(contact, "not-an-ip", PEERS) == "not-an-ip"
    assert str(PEERS) == "10.0.0.0/24,192.0.2.7/32,2001:db8::/32"
    assert str(TgrpPeers.parse("")) == ""
    with pytest.raises(ValueError, match="SIP_TGRP_PEERS"):
        TgrpPeers.parse("10.0.0.0/24,gateway-1")


def test_invite_events_carry_the_contact_trunk_group() -> None:
    tracker = DialogTracker()
    invite = request("INVITE", extra="Contact: <sip:+8613800138000;tgrp=tg-robot@10.0.0.1>\r\n")
    fed = tracker.feed(parse_sip(invite, T0, trunk="10.0.0.1", switch="kam-1", tgrp_peers=PEERS))
    assert [(e.kind, e.trunk, e.switch) for e in fed.events] == [("attempt", "tg-robot", "kam-1")]
    # The caller's number is not disturbed by the user-part parameters.
    assert fed.events[0].caller == "+8613800138000"
    plain = request("INVITE", call_id="c2", extra="Contact: <sip:+8613800138000@10.0.0.1>\r\n")
    fed = tracker.feed(parse_sip(plain, T0, trunk="10.0.0.1", switch="kam-1", tgrp_peers=PEERS))
    assert fed.events[0].trunk == "10.0.0.1"


def test_the_feed_takes_its_trusted_peers_from_the_settings() -> None:
    feed = SipFeed.for_settings(Settings.from_env(environ={}, sip_tgrp_peers="10.0.0.0/24"),
                                sink=None)  # type: ignore[arg-type]
    assert feed.tgrp_peers.trusts("10.0.0.1") and not feed.tgrp_peers.trusts("10.0.1.1")
