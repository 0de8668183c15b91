"""What a score means: the analyst-owned policy, the allowlist, and the decision function.

The worker never hard-codes a threshold: it asks :func:`decide` with the policy currently read
from the compacted ``control.policy`` topic. The order of checks is the order of harm:
allowlisted (emergency and protected numbers, never blocked) first, then do-not-originate
(numbers that must never call, blocked on sight), then thresholds gated by minimum evidence so a
low-volume person is never blocked, then hysteresis so a number does not flap, then the blast
radius limiter. Every decision carries reasons a person can read.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import orjson

from streams.schema import AllowEntry, Decision
from streams.scope import (SCOPE_PREFIX, SCOPE_TRUNK, SEGMENT_NEIGHBOUR,
                           SOURCE_SCOPES, CallMatch, decision_key)

#: Actions in increasing severity; "unblock" is issued by people, not by thresholds.
SEVERITY: dict[str, int] = {"": 0, "label": 1, "rate_limit": 2, "block": 3}
THRESHOLD_ACTIONS = ("label", "rate_limit", "block")
#: Actions that act on traffic; a "label" only annotates a number.
ENFORCING = ("rate_limit", "block")

#: Built into every worker and not removable through control.allowlist: emergency services
#: (China 110/119/120/122, GSM 112, North America 911, EU 999/000 style short codes) and the
#: redress line blocked callers are pointed to.
BUILTIN_ALLOW: dict[str, str] = {
    "110": "emergency: police (CN)", "119": "emergency: fire (CN)",
    "120": "emergency: ambulance (CN)", "122": "emergency: traffic police (CN)",
    "112": "emergency: GSM/EU", "911": "emergency: NANP", "999": "emergency: UK/HK",
    "000": "emergency: AU", "12110": "emergency: SMS police (CN)",
}


#: control.policy key suffix of a policy's shadow candidate: ``default#shadow`` is evaluated by
#: the workers beside ``default`` and its decisions go to ``decisions.shadow``, never to switches.
SHADOW_SUFFIX = "#shadow"
#: control.policy key of the global switches (:class:`ControlSwitches`), not a policy.
SWITCHES_KEY = "#switches"


#: A policy name: ASCII letters, digits, '-', '_' and single inner dots, at most 64 characters.
#: Names become topic keys, audit subjects and URL path segments: no '..', no '/', no '#'
#: (the shadow and switches keys), no look-alike letters from other scripts.
POLICY_NAME = re.compile(r"^(?=.{1,64}$)[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*$")
#: The longest TTL a policy may give any action of any scope: an action outliving a month
#: is a typing error (an epoch time where seconds were meant, 2**64-1), not a decision.
MAX_POLICY_TTL_S = 30 * 86_400
#: Shortest do-not-originate prefix: such callers are blocked on sight, without evidence, so
#: a prefix of a digit or two would block a country's worth of people.
MIN_DO_NOT_ORIGINATE_DIGITS = 4
#: E.164 numbers have at most 15 digits; a longer prefix can match nothing.
MAX_PREFIX_DIGITS = 15


def ascii_digits(value: Any) -> bool:
    """True for a non-empty string of ASCII digits only (``str.isdigit`` also accepts
    Arabic-Indic, superscript and other digits no switch ever sends)."""
    return isinstance(value, str) and value.isascii() and value.isdigit()


def _number(value: Any) -> bool:
    """A JSON number that is not a boolean (``True`` is an ``int`` in Python) and is finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def shadow_key(name: str) -> str:
    return f"{name}{SHADOW_SUFFIX}"


class PolicyError(ValueError):
    """A policy that must not be applied; the message names the field."""


@dataclass(frozen=True)
class Thresholds:
    label: float = 0.5
    rate_limit: float = 0.7
    block: float = 0.85

    def validate(self, where: str = "thresholds") -> None:
        vals = (self.label, self.rate_limit, self.block)
        for name, v in zip(THRESHOLD_ACTIONS, vals):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) \
                    or not 0.0 <= v <= 1.0:
                raise PolicyError(f"{where}.{name} must be a number in [0, 1], got {v!r}")
        if not self.label <= self.rate_limit <= self.block:
            raise PolicyError(f"{where} must satisfy label <= rate_limit <= block, got {vals}")

    def of(self, action: str) -> float:
        return float(getattr(self, action))


def _default_scope_ttl() -> dict[str, int]:
    """Campaigns dial in bursts with idle hours between; a source block outlives the gap so
    the next burst is stopped from its first call (a block is refreshed while it dials)."""
    return {"label": 3600, "rate_limit": 7200, "block": 4 * 3600}


@dataclass(frozen=True)
class ScopePolicy:
    """What a source score means for one scope (``prefix`` ranges or ``trunk``s).

    A source decision cuts off everyone behind it, so the gates are stricter than for a number:
    enough calls, callers, callees and settled calls in the last hour, and almost no real
    conversations (``max_conversation_share``: answered calls that lasted, per attempt). A
    source where people talk is never blocked whole; the detector looks for a narrower part
    (a range, the trunk's unverified or neighbour-spoofed calls) instead.
    """

    enabled: bool = True
    thresholds: Thresholds = field(default_factory=lambda: Thresholds(0.5, 0.75, 0.85))
    min_attempts: int = 100
    min_callers: int = 20
    min_callees: int = 50
    min_outcomes: int = 50
    #: Upper bound on real conversations per call, judged with one pseudo-conversation added
    #: ((conversations + 1) / (calls + 1)), so a short sample never looks conversation-free.
    max_conversation_share: float = 0.02
    #: The same bound for a trunk's neighbour-spoofed calls (callers copying the callee's
    #: number block). People seldom call within their own block through a trunk, so this part
    #: is unusual in itself and may be judged on fewer calls than the whole trunk or its
    #: unverified calls, where people are common.
    neighbour_max_conversation_share: float = 0.02
    #: Most calls from numbers with enough calls for the number view to act on them alone
    #: (its ``min_attempts``: a single-number robot): the number view is the narrower scope,
    #: the source stays out of it.
    max_heavy_caller_share: float = 0.5
    #: Callers who held a real conversation in the last hour ("talkers"). A campaign's numbers
    #: almost never do; a handful of people among thousands of robot calls do, and protect
    #: the source even when the share of conversations is tiny.
    max_talkers: int = 5
    #: A source first seen less than this long ago (within the hour) is not acted on yet: the
    #: few people who share it may not have called. Costs little: a campaign's first minutes
    #: are the hardest to stop anyway.
    min_span_s: int = 600
    ttl_s: dict[str, int] = field(default_factory=_default_scope_ttl)
    hysteresis: float = 0.1
    #: New source blocks beyond this many per minute (event time) are turned into dry-run.
    max_blocks_per_min: int = 5

    def validate(self, where: str) -> "ScopePolicy":
        if not isinstance(self.enabled, bool):
            raise PolicyError(f"{where}.enabled must be true or false")
        self.thresholds.validate(f"{where}.thresholds")
        for name in ("min_attempts", "min_callers", "min_callees", "min_outcomes",
                     "max_talkers", "min_span_s", "max_blocks_per_min"):
            v = getattr(self, name)
            if not _integer(v) or v < 0:
                raise PolicyError(f"{where}.{name} must be a non-negative integer, got {v!r}")
        _check_ttls(self.ttl_s, f"{where}.ttl_s")
        for name in ("max_conversation_share", "neighbour_max_conversation_share",
                     "max_heavy_caller_share", "hysteresis"):
            v = getattr(self, name)
            if not _number(v) or not 0.0 <= v < 1.0:
                raise PolicyError(f"{where}.{name} must be a number in [0, 1), got {v!r}")
        return self

    @classmethod
    def from_dict(cls, obj: Any, where: str) -> "ScopePolicy":
        if not isinstance(obj, Mapping):
            raise PolicyError(f"{where} must be an object")
        unknown = set(obj) - set(cls.__dataclass_fields__)
        if unknown:
            raise PolicyError(f"{where}: unknown fields {', '.join(sorted(unknown))}")
        data = dict(obj)
        if "thresholds" in data:
            data["thresholds"] = _thresholds(data["thresholds"], f"{where}.thresholds")
        if "ttl_s" in data:
            data["ttl_s"] = _ttl_map(data["ttl_s"], f"{where}.ttl_s", _default_scope_ttl())
        return cls(**data).validate(where)


def _default_scopes() -> dict[str, ScopePolicy]:
    """A whole trunk tolerates fewer conversations (and talkers) than a range before it is
    spared: the people on a shared trunk are a small share of its calls, and a trunk block cuts
    them all (at 1 %, a hundred calls without one). A range acts on less volume: a pool of
    numbers in one block dials slowly, and a range of people cannot make 50 calls without one
    real conversation."""
    return {SCOPE_PREFIX: ScopePolicy(min_attempts=50, min_callees=30, min_outcomes=30),
            SCOPE_TRUNK: ScopePolicy(min_attempts=50, min_callees=30, min_outcomes=30,
                                     max_conversation_share=0.01, max_talkers=3)}


def _check_ttls(ttl_s: Mapping[str, Any], where: str) -> None:
    for action in THRESHOLD_ACTIONS:
        v = ttl_s.get(action)
        if not _integer(v) or not 0 < v <= MAX_POLICY_TTL_S:
            raise PolicyError(f"{where}.{action} must be a whole number of seconds in "
                              f"1..{MAX_POLICY_TTL_S} (30 days), got {v!r}")


def _ttl_map(obj: Any, where: str, defaults: Mapping[str, int]) -> dict[str, int]:
    """A TTL object ``{"label": s, "rate_limit": s, "block": s}`` over ``defaults``; a list
    of pairs (which ``dict()`` would accept) or an unknown action is refused."""
    if not isinstance(obj, Mapping):
        raise PolicyError(f"{where} must be an object keyed by {', '.join(THRESHOLD_ACTIONS)}, "
                          f"got {type(obj).__name__}")
    unknown = set(obj) - set(THRESHOLD_ACTIONS)
    if unknown:
        raise PolicyError(f"{where}: unknown actions {', '.join(sorted(map(str, unknown)))}")
    return {**defaults, **obj}


@dataclass(frozen=True)
class Policy:
    name: str = "default"
    version: int = 1
    author: str = "builtin"
    reason: str = "built-in defaults"
    thresholds: Thresholds = field(default_factory=Thresholds)
    #: Per-prefix threshold overrides (longest prefix wins), e.g. {"86400": {...}}.
    prefix_overrides: dict[str, Thresholds] = field(default_factory=dict)
    #: No rate_limit or block before a number has made this many attempts in the last hour
    #: to this many distinct callees, and this many of its attempts have an outcome.
    min_attempts: int = 30
    min_distinct: int = 20
    min_outcomes: int = 20
    ttl_s: dict[str, int] = field(default_factory=lambda: {
        "label": 3600, "rate_limit": 1800, "block": 3600})
    #: A number keeps its action until the score falls this far below the action's threshold.
    hysteresis: float = 0.1
    dry_run: bool = False
    #: New blocks beyond this many per minute (event time) are turned into dry-run.
    max_blocks_per_min: int = 50
    #: Caller prefixes that must never originate calls (unallocated ranges, inbound-only).
    do_not_originate: tuple[str, ...] = ()
    #: Guarded rollout: once at least ``fp_min_labels`` of the numbers this version enforced
    #: against carry a fresh label, a share above ``fp_target`` labelled legitimate rolls the
    #: version back to the previous one (audited and alerted).
    fp_target: float = 0.05
    fp_min_labels: int = 10
    #: Thresholds, evidence, TTLs and limiter of source decisions, per scope (prefix, trunk);
    #: the fields above are the number scope's.
    scopes: dict[str, ScopePolicy] = field(default_factory=_default_scopes)

    def validate(self) -> "Policy":
        if not isinstance(self.name, str) or not POLICY_NAME.match(self.name):
            raise PolicyError(f"name {self.name!r} must be 1-64 ASCII letters, digits, '-', '_' "
                              "and single dots inside (no '..', '/', '#')")
        if not _integer(self.version) or self.version < 1:
            raise PolicyError(f"version must be a positive integer, got {self.version!r}")
        self.thresholds.validate()
        for prefix, t in self.prefix_overrides.items():
            if not ascii_digits(prefix) or len(prefix) > MAX_PREFIX_DIGITS:
                raise PolicyError(f"prefix_overrides key {prefix!r} must be digits 0-9 (at most "
                                  f"{MAX_PREFIX_DIGITS})")
            t.validate(f"prefix_overrides[{prefix}]")
        for name in ("min_attempts", "min_distinct", "min_outcomes", "max_blocks_per_min"):
            v = getattr(self, name)
            if not _integer(v) or v < 0:
                raise PolicyError(f"{name} must be a non-negative integer, got {v!r}")
        _check_ttls(self.ttl_s, "ttl_s")
        for scope, sp in self.scopes.items():
            if scope not in SOURCE_SCOPES:
                raise PolicyError(f"scopes: {scope!r} is not one of {', '.join(SOURCE_SCOPES)}")
            sp.validate(f"scopes.{scope}")
        if not _number(self.hysteresis) or not 0 <= self.hysteresis < 1:
            raise PolicyError(f"hysteresis must be a number in [0, 1), got {self.hysteresis!r}")
        if not isinstance(self.dry_run, bool):
            raise PolicyError("dry_run must be true or false")
        for p in self.do_not_originate:
            if not ascii_digits(p) or \
                    not MIN_DO_NOT_ORIGINATE_DIGITS <= len(p) <= MAX_PREFIX_DIGITS:
                raise PolicyError(f"do_not_originate entry {p!r} must be "
                                  f"{MIN_DO_NOT_ORIGINATE_DIGITS}-{MAX_PREFIX_DIGITS} digits 0-9 "
                                  "(its callers are blocked on sight)")
        if not _number(self.fp_target) or not 0.0 <= self.fp_target <= 1.0:
            raise PolicyError(f"fp_target must be a number in [0, 1], got {self.fp_target!r}")
        if not _integer(self.fp_min_labels) or self.fp_min_labels < 1:
            raise PolicyError(f"fp_min_labels must be a positive integer, got "
                              f"{self.fp_min_labels!r}")
        return self

    def scope(self, scope: str) -> ScopePolicy:
        """The policy of a source scope (built-in defaults for a scope the policy leaves out)."""
        return self.scopes.get(scope) or ScopePolicy()

    def thresholds_for(self, number: str) -> tuple[Thresholds, str]:
        best = ""
        for prefix in self.prefix_overrides:
            if number.startswith(prefix) and len(prefix) > len(best):
                best = prefix
        return (self.prefix_overrides[best], best) if best else (self.thresholds, "")

    # -- wire -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["do_not_originate"] = list(self.do_not_originate)
        return d

    def encode(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "Policy":
        if not isinstance(obj, Mapping):
            raise PolicyError("a policy must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = set(obj) - known
        if unknown:
            raise PolicyError(f"unknown policy fields: {', '.join(sorted(unknown))}")
        data = dict(obj)
        try:
            if "thresholds" in data:
                data["thresholds"] = _thresholds(data["thresholds"], "thresholds")
            if "prefix_overrides" in data:
                overrides = data["prefix_overrides"]
                if not isinstance(overrides, Mapping):
                    raise PolicyError("prefix_overrides must be an object keyed by prefix "
                                      f"digits, got {type(overrides).__name__}")
                data["prefix_overrides"] = {
                    k: _thresholds(v, f"prefix_overrides[{k}]") for k, v in overrides.items()}
            if "ttl_s" in data:
                data["ttl_s"] = _ttl_map(data["ttl_s"], "ttl_s", Policy().ttl_s)
            if "do_not_originate" in data:
                dno = data["do_not_originate"]
                # A string or an object is iterable too: "86400" would become five one-digit
                # prefixes, blocking on sight every caller starting with 8, 6, 4 or 0.
                if not isinstance(dno, (list, tuple)):
                    raise PolicyError("do_not_originate must be a list of prefix strings, "
                                      f"got {type(dno).__name__}")
                data["do_not_originate"] = tuple(dno)
            if "scopes" in data:
                if not isinstance(data["scopes"], Mapping):
                    raise PolicyError("scopes must be an object keyed by prefix, trunk")
                unknown_scopes = set(data["scopes"]) - set(SOURCE_SCOPES)
                if unknown_scopes:
                    raise PolicyError(f"scopes: unknown scopes {', '.join(sorted(unknown_scopes))}"
                                      f"; choose from {', '.join(SOURCE_SCOPES)}")
                data["scopes"] = {**_default_scopes(), **{
                    k: ScopePolicy.from_dict(v, f"scopes.{k}")
                    for k, v in data["scopes"].items()}}
        except (TypeError, ValueError) as exc:
            if isinstance(exc, PolicyError):
                raise
            raise PolicyError(str(exc)) from None
        return cls(**data).validate()

    @classmethod
    def decode(cls, raw: bytes) -> "Policy":
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise PolicyError(f"policy is not JSON: {exc.msg}") from None
        return cls.from_dict(obj)


@dataclass(frozen=True)
class ControlSwitches:
    """Global switches every worker obeys, whatever policy it applies (key ``#switches``).

    ``dry_run_all``: the kill switch. While on, every decision of every policy is published as
    dry-run (switches ignore it); enforcement already in force runs out on its TTL.
    """

    dry_run_all: bool = False
    author: str = "builtin"
    reason: str = ""
    at: float = 0.0

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> "ControlSwitches":
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise PolicyError(f"switches record is not JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise PolicyError("switches record must be a JSON object")
        unknown = set(obj) - set(cls.__dataclass_fields__)
        if unknown:
            raise PolicyError(f"unknown switch fields: {', '.join(sorted(unknown))}")
        if not isinstance(obj.get("dry_run_all", False), bool):
            raise PolicyError("dry_run_all must be true or false")
        return cls(**obj)


def _thresholds(obj: Any, where: str) -> Thresholds:
    if not isinstance(obj, Mapping):
        raise PolicyError(f"{where} must be an object with label, rate_limit, block")
    unknown = set(obj) - set(THRESHOLD_ACTIONS)
    if unknown:
        raise PolicyError(f"{where}: unknown fields {', '.join(sorted(unknown))}")
    t = Thresholds(**{**asdict(Thresholds()), **obj})
    t.validate(where)
    return t


class AllowList:
    """Built-in protected numbers plus analyst entries from ``control.allowlist``."""

    def __init__(self) -> None:
        self.entries: dict[str, AllowEntry] = {}

    def apply(self, key: str, entry: AllowEntry | None) -> None:
        """Apply one compacted-topic record (None = tombstone = removed)."""
        if entry is None:
            self.entries.pop(key, None)
        else:
            self.entries[key] = entry

    @staticmethod
    def _live(entry: AllowEntry, now: float) -> bool:
        return not entry.expires_at or entry.expires_at > now

    def protects_source(self, scope: str, target: str, now: float) -> str | None:
        """Why a source decision on this target must not be made, or None.

        A trunk is protected when it is allowlisted itself. A range is protected when it holds
        a protected number or overlaps a protected range (either is a prefix of the other):
        blocking the range would cut off the bank, the hospital or the emergency line in it.
        """
        if scope == SCOPE_TRUNK:
            entry = self.entries.get(decision_key(SCOPE_TRUNK, target))
            if entry is not None and entry.trunk and self._live(entry, now):
                return entry.reason or f"allowlisted trunk {target}"
            return None
        if scope == SCOPE_PREFIX:
            for number, why in BUILTIN_ALLOW.items():
                if number.startswith(target):
                    return why
            for e in self.entries.values():
                if e.trunk or not self._live(e, now):
                    continue
                if e.number.startswith(target) or (e.prefix and target.startswith(e.number)):
                    return e.reason or f"holds allowlisted {e.number}"
            return None
        return self.match(target, now)

    def match(self, number: str, now: float) -> str | None:
        """Why this number is protected, or None."""
        if number in BUILTIN_ALLOW:
            return BUILTIN_ALLOW[number]
        entry = self.entries.get(number)
        if entry is not None and (not entry.expires_at or entry.expires_at > now):
            return entry.reason or "allowlisted"
        for e in self.entries.values():
            if e.prefix and number.startswith(e.number) and self._live(e, now):
                return e.reason or f"allowlisted prefix {e.number}"
        return None


@dataclass
class CurrentAction:
    """What the policy last did to a number (persisted with the number's counters)."""

    action: str = ""
    until: float = 0.0
    score: float = 0.0
    dry_run: bool = False

    def active(self, now: float) -> str:
        return self.action if now < self.until else ""


class BlockLimiter:
    """Bounds new blocks per event-time minute: a misfiring model must not cut off a city."""

    def __init__(self) -> None:
        self.minute = -1
        self.count = 0
        self.trips = 0

    def allow(self, ts: float, limit: int) -> bool:
        minute = int(ts // 60)
        if minute != self.minute:
            self.minute, self.count = minute, 0
        if self.count >= limit:
            self.trips += 1
            return False
        self.count += 1
        return True


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def explain(feats: Mapping[str, float]) -> str:
    """The counters behind a score, in words (the first reason of every decision)."""
    parts = [f"{feats.get('attempts_10m', 0):.0f} attempts in 10 min "
             f"({feats.get('attempts_1h', 0):.0f} in 1 h) to "
             f"{feats.get('distinct_1h', 0):.0f} distinct numbers",
             f"{_pct(feats.get('answer_ratio_1h', 0))} answered"]
    if feats.get("released_1h", 0) > 0:
        parts.append(f"{_pct(feats.get('short_ratio_1h', 0))} of finished calls short "
                     f"(mean {feats.get('mean_duration_1h', 0):.0f} s)")
    if feats.get("unallocated_ratio_1h", 0) >= 0.05:
        parts.append(f"{_pct(feats['unallocated_ratio_1h'])} unallocated")
    if feats.get("sequential_ratio_1h", 0) >= 0.1:
        parts.append(f"{_pct(feats['sequential_ratio_1h'])} sequential")
    return ", ".join(parts)


def evidence_ok(policy: Policy, feats: Mapping[str, float]) -> tuple[bool, str]:
    attempts = feats.get("attempts_1h", 0.0)
    distinct = feats.get("distinct_1h", 0.0)
    outcomes = feats.get("answered_1h", 0.0) + feats.get("fail_ratio_1h", 0.0) * attempts
    if attempts < policy.min_attempts:
        return False, f"only {attempts:.0f} attempts < min {policy.min_attempts}"
    if distinct < policy.min_distinct:
        return False, f"only {distinct:.0f} distinct callees < min {policy.min_distinct}"
    if outcomes < policy.min_outcomes:
        return False, f"only {outcomes:.0f} settled calls < min {policy.min_outcomes}"
    return True, ""


def decide(policy: Policy, allow: AllowList, limiter: BlockLimiter, number: str,
           score: float, feats: Mapping[str, float], current: CurrentAction,
           trigger_ts: float, decided_at: float, hold: str = ""
           ) -> tuple[Decision | None, str | None]:
    """Return (decision to publish or None, the action in force after this score or None).

    A decision is published when the action escalates, or when the action still holds and its
    TTL is more than half spent (a refresh, so switches keep blocking a number that keeps
    dialing). Nothing is published for a number whose action holds and is fresh. ``hold`` says
    why this number must not be enforced against even if it scores (a number that is probably
    spoofed: blocking it would cut off its owner); it is labelled at most.
    """
    protected = allow.match(number, trigger_ts)
    if protected is not None:
        return None, None
    policy_tag = f"policy {policy.name} v{policy.version}"
    for prefix in policy.do_not_originate:
        if number.startswith(prefix):
            return _emit(policy, number, "block", 1.0, [
                f"caller ID in do-not-originate range {prefix}: must never originate calls",
                policy_tag], current, trigger_ts, decided_at, limiter)
    thresholds, override = thresholds_for_tag(policy, number)
    target = ""
    for action in reversed(THRESHOLD_ACTIONS):
        if score >= thresholds.of(action):
            target = action
            break
    held = current.active(trigger_ts)
    # Hysteresis: keep a stronger action while the score stays within the band below it.
    if SEVERITY[held] > SEVERITY[target] and \
            score >= thresholds.of(held) - policy.hysteresis:
        target = held
    gate_note = ""
    if SEVERITY[target] >= SEVERITY["rate_limit"]:
        ok, why = evidence_ok(policy, feats)
        if not ok:
            gate_note = f"not enough evidence for {target}: {why}"
            target = "label" if SEVERITY[held] < SEVERITY["rate_limit"] else held
        elif hold:
            gate_note = f"{target} held back to a label: {hold}"
            target = "label" if SEVERITY[held] < SEVERITY["rate_limit"] else held
    if not target:
        return None, held or None
    fired = thresholds.of(target)
    reasons = [explain(feats),
               f"score {score:.2f} >= {target} {fired:.2f}{override}, {policy_tag}"]
    if gate_note:
        reasons.append(gate_note)
    return _emit(policy, number, target, score, reasons, current, trigger_ts, decided_at,
                 limiter)


def thresholds_for_tag(policy: Policy, number: str) -> tuple[Thresholds, str]:
    thresholds, prefix = policy.thresholds_for(number)
    return thresholds, (f" (override for prefix {prefix})" if prefix else "")


def _emit(policy: Policy, number: str, action: str, score: float, reasons: list[str],
          current: CurrentAction, trigger_ts: float, decided_at: float,
          limiter: BlockLimiter, source: "SourceTarget | None" = None,
          ) -> tuple[Decision | None, str | None]:
    held = current.active(trigger_ts)
    scope_policy = policy.scope(source.scope) if source is not None else None
    ttl = (scope_policy or policy).ttl_s[action]
    max_blocks = (scope_policy or policy).max_blocks_per_min
    dry_run = policy.dry_run
    # A dry-run decision is re-issued for real once dry-run is lifted (or the limiter frees up).
    same_mode = current.dry_run == dry_run
    if held == action and same_mode and current.until - trigger_ts > ttl / 2:
        return None, held
    if SEVERITY[held] > SEVERITY[action]:
        return None, held
    if action == "block" and not dry_run and (held != "block" or current.dry_run) and \
            not limiter.allow(trigger_ts, max_blocks):
        dry_run = True
        reasons = reasons + [f"block limiter tripped: more than {max_blocks} "
                             "new blocks this minute, issued as dry-run"]
    decision = Decision(number=number, action=action, ttl_s=ttl, score=round(score, 4),
                        reasons=reasons, policy=policy.name, policy_version=policy.version,
                        decided_at=decided_at, trigger_ts=trigger_ts, dry_run=dry_run)
    if source is not None:
        decision.scope, decision.target = source.scope, source.target
        decision.switch = source.switch
        decision.match = source.match.to_dict() if source.match is not None else None
    return decision, action


# -- source decisions (prefix and trunk scopes) ------------------------------------------------
#: Feature names a source decision's gates read (computed by streams.source_features).
SRC_ATTEMPTS = "attempts_1h"
SRC_CALLERS = "distinct_callers_1h"
SRC_CALLEES = "distinct_callees_1h"
SRC_SETTLED = "settled_1h"
SRC_PROTECTED = "protected_1h"
SRC_CONVERSATIONS = "conversations_1h"
SRC_HEAVY = "heavy_caller_share_1h"
SRC_TALKERS = "talkers_1h"
SRC_ATTEMPTS_DAY = "attempts_24h"
SRC_CONVERSATIONS_DAY = "conversations_24h"
SRC_SPAN = "observed_s"
#: The action that lifts an enforcement in force (published like any decision).
UNBLOCK = "unblock"


@dataclass(frozen=True)
class SourceTarget:
    """What a source decision acts on: a range, a whole trunk, or part of a trunk's calls."""

    scope: str
    target: str
    switch: str | None = None
    match: CallMatch | None = None

    @property
    def key(self) -> str:
        return decision_key(self.scope, self.target)

    def describe(self) -> str:
        if self.scope == SCOPE_PREFIX:
            return f"range {self.target}*"
        what = f"trunk {self.target}"
        return what if self.match is None else f"{what}, calls with {self.match.describe()}"


def people_on_source(sp: ScopePolicy, feats: Mapping[str, float], segment: str = "",
                     seen: bool = False) -> str:
    """Why people (or protected callers) may be calling through this source, or "".

    Before a decision, a short sample must not look conversation-free by luck, so the share
    of conversations is bounded from above with one pseudo-conversation. ``seen``: to lift a
    decision in force the people must really have been seen (more talkers than the policy
    allows, protected callers, or more observed conversations than a campaign's own chance
    ones), so a quiet hour between two bursts does not lift it.
    """
    attempts = feats.get(segment + SRC_ATTEMPTS, 0.0)
    talks = feats.get(segment + SRC_CONVERSATIONS, 0.0)
    bound = sp.neighbour_max_conversation_share if segment == SEGMENT_NEIGHBOUR \
        else sp.max_conversation_share
    conversation = (talks + (0.0 if seen else 1.0)) / (attempts + 1.0)
    if conversation > bound and (not seen or talks > sp.max_talkers):
        return (f"up to {100 * conversation:.1f}% of calls are real conversations > "
                f"{100 * bound:.1f}%: people call through it")
    day_talks = feats.get(segment + SRC_CONVERSATIONS_DAY, 0.0)
    day = (day_talks + 1.0) / (feats.get(segment + SRC_ATTEMPTS_DAY, 0.0) + 1.0)
    if day > bound and day_talks > sp.max_talkers:
        return (f"{100 * day:.1f}% of its calls in the last day were real conversations > "
                f"{100 * bound:.1f}%: people call through it, if not this hour")
    if feats.get(segment + SRC_TALKERS, 0.0) > sp.max_talkers:
        return (f"{feats.get(segment + SRC_TALKERS, 0.0):.0f} callers held real "
                f"conversations > {sp.max_talkers}: people call through it")
    if feats.get(segment + SRC_PROTECTED, 0.0) > 0:
        return "protected callers (emergency, allowlisted) call through it"
    return ""


def source_evidence_ok(sp: ScopePolicy, feats: Mapping[str, float],
                       segment: str = "") -> tuple[bool, str]:
    """Enough calls behind a source decision, seen long enough, and nobody really talking.

    ``segment`` is the feature-name prefix of the part of a trunk the decision would cover
    (``""``: all of it); callees and the span observed are counted for the whole source.
    """
    attempts = feats.get(segment + SRC_ATTEMPTS, 0.0)
    settled = feats.get(segment + SRC_SETTLED, 0.0)
    callers = feats.get(segment + SRC_CALLERS, 0.0)
    if attempts < sp.min_attempts:
        return False, f"only {attempts:.0f} calls < min {sp.min_attempts}"
    if callers < sp.min_callers:
        return False, (f"only {callers:.0f} distinct callers < min {sp.min_callers} "
                       "(the number view is narrower)")
    if feats.get(segment + SRC_HEAVY, 0.0) > sp.max_heavy_caller_share:
        return False, (f"{_pct(feats.get(segment + SRC_HEAVY, 0.0))} of the calls come from "
                       "numbers busy enough for the number view, which is narrower")
    if feats.get(SRC_CALLEES, 0.0) < sp.min_callees:
        return False, f"only {feats.get(SRC_CALLEES, 0.0):.0f} distinct callees < min " \
                      f"{sp.min_callees}"
    if settled < sp.min_outcomes:
        return False, f"only {settled:.0f} settled calls < min {sp.min_outcomes}"
    if feats.get(SRC_SPAN, 0.0) < sp.min_span_s:
        return False, (f"seen for {feats.get(SRC_SPAN, 0.0) / 60:.0f} min < "
                       f"{sp.min_span_s / 60:.0f} min: people on it may not have called yet")
    people = people_on_source(sp, feats, segment)
    return (False, people) if people else (True, "")


def source_action(sp: ScopePolicy, score: float, feats: Mapping[str, float], held: str,
                  segment: str = "") -> tuple[str, str]:
    """(action the scope policy gives this score, why a stronger one was held back or "").

    Pure, so a detector can weigh several parts of a trunk before it decides on one. An
    enforcement in force is lifted (``unblock``) as soon as people are seen on the source.
    """
    target = ""
    for action in reversed(THRESHOLD_ACTIONS):
        if score >= sp.thresholds.of(action):
            target = action
            break
    if SEVERITY[held] > SEVERITY[target] and score >= sp.thresholds.of(held) - sp.hysteresis:
        target = held
    if held in ENFORCING:
        people = people_on_source(sp, feats, segment, seen=True)
        if people:
            return UNBLOCK, f"{held} lifted: {people}"
    if SEVERITY[target] >= SEVERITY["rate_limit"]:
        ok, why = source_evidence_ok(sp, feats, segment)
        if not ok:
            return ("label" if SEVERITY[held] < SEVERITY["rate_limit"] else held,
                    f"not enough evidence for {target}: {why}")
    return target, ""


def decide_source(policy: Policy, allow: AllowList, limiter: BlockLimiter,
                  source: SourceTarget, score: float, feats: Mapping[str, float],
                  explanation: str, current: CurrentAction, trigger_ts: float,
                  decided_at: float, segment: str = "", notes: tuple[str, ...] = (),
                  max_action: str = "block") -> tuple[Decision | None, str | None]:
    """:func:`decide` for a range or a trunk: same order of harm, the scope's own policy.

    Allowlisted trunks and ranges holding protected numbers get nothing; a source without
    enough evidence, or where people hold conversations, gets a label at most. ``notes`` are
    added to the reasons (e.g. why a trunk decision was narrowed to part of its calls);
    ``max_action`` caps the action (a trunk no switch can match is labelled at most).
    """
    sp = policy.scope(source.scope)
    if not sp.enabled:
        return None, None
    if allow.protects_source(source.scope, source.target, trigger_ts) is not None:
        return None, None
    held = current.active(trigger_ts)
    target, gate_note = source_action(sp, score, feats, held, segment)
    if target == UNBLOCK:
        return Decision(
            number=source.key, action=UNBLOCK, ttl_s=sp.ttl_s["label"], score=round(score, 4),
            reasons=[f"{source.describe()}: {explanation}", gate_note, *notes],
            policy=policy.name, policy_version=policy.version, decided_at=decided_at,
            trigger_ts=trigger_ts, dry_run=policy.dry_run, scope=source.scope,
            target=source.target, switch=source.switch,
            match=source.match.to_dict() if source.match is not None else None), "label"
    if SEVERITY[target] > SEVERITY[max_action]:
        target = max_action
    if not target:
        return None, held or None
    fired = sp.thresholds.of(target)
    how = f">= {target} {fired:.2f}" if score >= fired else \
        f"keeps {target} (within {sp.hysteresis:g} of {fired:.2f})"
    reasons = [f"{source.describe()}: {explanation}",
               f"score {score:.2f} {how} for {source.scope}s, policy {policy.name} "
               f"v{policy.version}", *notes]
    if gate_note:
        reasons.append(gate_note)
    return _emit(policy, source.key, target, score, reasons, current, trigger_ts, decided_at,
                 limiter, source)
