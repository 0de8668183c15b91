"""The trunk a SIP call entered through, as the ingest names it: the same rule as the switch
(dialguard.cfg route[TRUNK]), or trunk decisions built from events would match no call."""

from __future__ import annotations

import pytest

from services.ingest.sip_dialogs import DialogTracker, contact_tgrp, parse_sip, trunk_of
from tests.unit.test_sip_dialogs import T0, request


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
    assert trunk_of("<sip:1@h;tgrp=tg-a>", "10.0.0.9") == "tg-a"
    assert trunk_of("<sip:1@h>", "10.0.0.9") == "10.0.0.9"
    assert trunk_of(None, "10.0.0.9") == "10.0.0.9"
    assert trunk_of(None, None) is None


def test_invite_events_carry_the_contact_trunk_group() -> None:
    tracker = DialogTracker()
    invite = request("INVITE", extra="Contact: <sip:+8613800138000;tgrp=tg-robot@10.0.0.1>\r\n")
    fed = tracker.feed(parse_sip(invite, T0, trunk="10.0.0.1", switch="kam-1"))
    assert [(e.kind, e.trunk, e.switch) for e in fed.events] == [("attempt", "tg-robot", "kam-1")]
    # The caller's number is not disturbed by the user-part parameters.
    assert fed.events[0].caller == "+8613800138000"
    plain = request("INVITE", call_id="c2", extra="Contact: <sip:+8613800138000@10.0.0.1>\r\n")
    fed = tracker.feed(parse_sip(plain, T0, trunk="10.0.0.1", switch="kam-1"))
    assert fed.events[0].trunk == "10.0.0.1"
