"""Small event builders for unit tests (no simulator, no Kafka)."""

from streams.schema import SignalingEvent

T0 = 1_800_000_000.0


def call(caller, callee, ts, answered, duration=0.0, code=None, proto="sip", attest=None,
         trunk=None, switch=None, n=[0]):
    """The events of one call: attempt, then answer+release or fail."""
    n[0] += 1
    cid = f"c{n[0]}"

    def ev(at, kind, **extra):
        return SignalingEvent(ts=at, proto=proto, kind=kind, call_id=cid, caller=caller,
                              callee=callee, trunk=trunk, switch=switch, **extra)

    evs = [ev(ts, "attempt", attest=attest)]
    if answered:
        evs.append(ev(ts + 5, "answer", code=200))
        evs.append(ev(ts + 5 + duration, "release", duration_s=duration))
    else:
        evs.append(ev(ts + 20, "fail", code=code or 480))
    return evs


def ordered(*populations):
    """Events of one or more populations merged in event time, as a network delivers them."""
    return sorted((e for events in populations for e in events), key=lambda e: e.ts)
