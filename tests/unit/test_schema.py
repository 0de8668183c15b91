import orjson
import pytest

from streams.schema import (Decision, EventValidator, InvalidEvent, SignalingEvent,
                            REASON_FUTURE, REASON_MISSING, REASON_NOT_JSON, REASON_NOT_OBJECT,
                            REASON_NUMBER, REASON_TYPE, REASON_VALUE, REASON_VERSION)

NOW = 1_800_000_000.0
V = EventValidator()


def good(**over):
    ev = {"v": 1, "ts": NOW - 10, "proto": "sip", "kind": "attempt", "call_id": "c1",
          "caller": "+86 138 0013 8000", "callee": "013900139000", "code": None,
          "duration_s": None, "trunk": "t1", "switch": "sw1", "attest": "A"}
    ev.update(over)
    return orjson.dumps(ev)


def test_valid_event_is_normalised():
    ev = V.decode(good(), now=NOW)
    assert ev.caller == "8613800138000" and ev.callee == "8613900139000"
    assert ev.attest == "A" and ev.kind == "attempt"


def test_roundtrip_uses_design_field_names():
    ev = SignalingEvent(ts=NOW, proto="isup", kind="release", call_id="x", caller="8613800138000",
                        callee="8613900139000", code=16, duration_s=42.0)
    obj = orjson.loads(ev.encode())
    # DESIGN.md's fields, plus caller_class (issue 13: calls without a caller number).
    assert set(obj) == {"v", "ts", "proto", "kind", "call_id", "caller", "callee", "code",
                        "duration_s", "trunk", "switch", "attest", "caller_class"}
    assert V.decode(ev.encode(), now=NOW + 1) == ev


@pytest.mark.parametrize("raw,reason", [
    (b"not json", REASON_NOT_JSON),
    (b"[1,2]", REASON_NOT_OBJECT),
    (good(v=2), REASON_VERSION),
    (orjson.dumps({"v": 1, "ts": NOW}), REASON_MISSING),
    (good(ts="yesterday"), REASON_TYPE),
    (good(code=True), REASON_TYPE),
    (good(duration_s=-3), REASON_VALUE),
    (good(kind="ring"), REASON_VALUE),
    (good(proto="h323"), REASON_VALUE),
    (good(attest="Z"), REASON_VALUE),
    (good(ts=NOW + 86400), REASON_FUTURE),
    (good(caller="anonymous"), REASON_NUMBER),
    (good(callee="12"), REASON_NUMBER),
])
def test_bad_records_are_rejected_with_reason(raw, reason):
    with pytest.raises(InvalidEvent) as err:
        V.decode(raw, now=NOW)
    assert err.value.reason == reason
    assert err.value.detail


def test_decision_roundtrip():
    d = Decision(number="8613800138000", action="block", ttl_s=3600, score=0.97,
                 reasons=["x"], policy="default", policy_version=3, decided_at=NOW,
                 trigger_ts=NOW - 1)
    assert Decision.decode(d.encode()) == d
    assert set(orjson.loads(d.encode())) >= {"number", "action", "ttl_s", "score", "reasons",
                                             "policy", "decided_at", "trigger_ts", "dry_run"}


def test_a_caller_that_is_not_a_number_is_kept_with_its_class_only_when_declared():
    body = orjson.loads(good())
    body.update(caller="anonymous", caller_class="withheld")
    ev = V.decode(orjson.dumps(body), now=NOW)
    assert (ev.caller, ev.caller_class) == ("anonymous", "withheld")
    assert ev.key == ev.call_id.encode()  # spread by call, not all on one "anonymous" key
    with pytest.raises(InvalidEvent) as bad:  # another producer's bad caller: still the DLQ
        V.decode(orjson.dumps({**body, "caller_class": None}), now=NOW)
    assert bad.value.reason == "bad_number"
    for klass, caller in (("robot", "anonymous"), ("invalid", "x" * 65)):
        with pytest.raises(InvalidEvent) as bad:
            V.decode(orjson.dumps({**body, "caller_class": klass, "caller": caller}), now=NOW)
        assert bad.value.reason == "bad_value"
