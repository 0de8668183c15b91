"""Small event builders for unit tests (no simulator, no Kafka)."""

from streams.schema import SignalingEvent

T0 = 1_800_000_000.0


def call(caller, callee, ts, answered, duration=0.0, code=None, proto="sip", attest=None,
         n=[0]):
    """The events of one call: attempt, then answer+release or fail."""
    n[0] += 1
    cid = f"c{n[0]}"
    evs = [SignalingEvent(ts=ts, proto=proto, kind="attempt", call_id=cid, caller=caller,
                          callee=callee, attest=attest)]
    if answered:
        evs.append(SignalingEvent(ts=ts + 5, proto=proto, kind="answer", call_id=cid,
                                  caller=caller, callee=callee, code=200))
        evs.append(SignalingEvent(ts=ts + 5 + duration, proto=proto, kind="release",
                                  call_id=cid, caller=caller, callee=callee,
                                  duration_s=duration))
    else:
        evs.append(SignalingEvent(ts=ts + 20, proto=proto, kind="fail", call_id=cid,
                                  caller=caller, callee=callee, code=code or 480))
    return evs


def ordered(events):
    return sorted(events, key=lambda e: e.ts)
