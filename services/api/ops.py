"""The API's writes: validated, versioned, audited, and visible to the next read.

Every operation is a plain blocking method (the aiohttp handlers run them in a thread), takes
the acting :class:`Identity`, writes its records and one :class:`AuditRecord` (who, when, what,
before/after) in a single flush, then waits until the views have seen them. One lock serialises
writes, so two analysts saving the same policy get two distinct versions, never the same one.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from services.api.auth import Identity
from services.api.errors import (BadRequest, Conflict, Forbidden, NotFound, Unavailable,
                                 Unprocessable)
from services.api.logsafe import loggable
from services.api.targets import check_prefix, check_trunk, trunk_key
from services.api.views import APPEAL_SUBJECT, Views
from services.api.writer import (MAX_REPORTED_FAILURES, MemoryWriter, Record, RecordWriter,
                                 WriteResult, Writer)
from services.settings import Settings
from streams.numbers import InvalidNumber, NumberPlan
from streams.policy import (BUILTIN_ALLOW, POLICY_NAME, SWITCHES_KEY, ControlSwitches, Policy,
                            PolicyError, shadow_key)
from streams.schema import LABEL_TARGET, AllowEntry, AuditRecord, Decision, Label
from streams.scope import (SCOPE_PREFIX, SCOPE_TRUNK, CallMatch, ScopeError, decision_key,
                           split_trunk_id)
from streams.topics import ALLOWLIST, AUDIT, DECISIONS, FEEDBACK, POLICY, POLICY_HISTORY

log = logging.getLogger(__name__)

#: How long a write waits for the views to see it before answering anyway (and logging it).
VISIBLE_TIMEOUT_S = 10.0
MAX_REASON_LEN = 500
MAX_NOTE_LEN = 2000
MAX_ID_LEN = 128
#: Manual decisions are tagged like this so they are never mistaken for a policy's.
MANUAL_POLICY = "manual"
MANUAL_VERSION = 0
#: Fields of a policy body the server sets itself (given ones are ignored).
SERVER_FIELDS = ("name", "version", "author", "reason")
STAGES = ("live", "shadow")
APPEAL_OUTCOMES = ("upheld", "denied")
APPEAL_LABEL = {"upheld": "appeal_upheld", "denied": "appeal_denied"}
#: The longest TTL a manual block or allowlist entry may be given (a year).
MAX_TTL_S = 366 * 86_400
#: Label ids listed in the audit record of a bulk intake (the count is always complete).
MAX_AUDITED_IDS = 100
#: Manual block TTL when the analyst gives none.
DEFAULT_MANUAL_TTL_S = 3600


def reason_of(obj: Mapping[str, Any] | None, required: bool = True) -> str:
    reason = (obj or {}).get("reason", "")
    if not isinstance(reason, str):
        raise BadRequest("reason must be a string")
    reason = reason.strip()
    if required and not reason:
        raise BadRequest("a reason is required (it is audited)")
    if len(reason) > MAX_REASON_LEN:
        raise BadRequest(f"reason is longer than {MAX_REASON_LEN} characters")
    return reason


def positive_int(value: Any, what: str, maximum: int = MAX_TTL_S) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or int(value) != value or not 0 < value <= maximum:
        raise BadRequest(f"{what} must be a whole number of seconds in 1..{maximum}, "
                         f"got {value!r}")
    return int(value)


def future_epoch(value: Any, what: str, now: float, horizon_s: int = MAX_TTL_S) -> float:
    """An epoch time in seconds after ``now`` and at most ``horizon_s`` later. Beyond it is a
    typing error (milliseconds for seconds: 1e13 is the year 318857), and such a value once
    made the console's date formatter throw for every analyst."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or not now < value <= now + horizon_s:
        raise BadRequest(f"{what} must be an epoch time in seconds, in the future and at most "
                         f"{horizon_s // 86_400} days ahead; got {value!r}")
    return float(value)


def candidate_policy(name: str, body: Any, version: int = 1, author: str = "",
                     reason: str = "") -> Policy:
    """A policy from a request body, validated (422 names the field); server fields set."""
    if not isinstance(body, Mapping):
        raise BadRequest("'policy' must be a JSON object of policy fields")
    obj = {k: v for k, v in body.items() if k not in SERVER_FIELDS}
    obj.update(name=name, version=version, author=author or "api", reason=reason)
    try:
        return Policy.from_dict(obj)
    except PolicyError as exc:
        raise Unprocessable(str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise Unprocessable(f"invalid policy: {exc}") from None


def check_policy_name(name: str) -> str:
    """A policy name from a URL or a body (the rule is :data:`streams.policy.POLICY_NAME`)."""
    if not isinstance(name, str) or not POLICY_NAME.match(name):
        raise BadRequest(f"policy name {name!r} must be 1-64 ASCII letters, digits, '-', '_' "
                         "and single dots inside (no '..', '/', '#')")
    return name


def normalise_number(plan: NumberPlan, raw: Any) -> str:
    """E.164 digits of a number given by a person (short codes stay short), as workers see it."""
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest("number must be a non-empty string")
    raw = raw.strip()
    try:
        return plan.normalise(raw)
    except InvalidNumber as exc:
        raise BadRequest(f"number {raw!r}: {exc}") from None


class Operations:
    def __init__(self, settings: Settings, views: Views,
                 writer: RecordWriter | None = None) -> None:
        self.settings = settings
        self.views = views
        self.writer = writer or Writer(settings)
        self.plan = NumberPlan(country_code=settings.country_code,
                               national_prefix=settings.national_prefix,
                               international_prefix=settings.international_prefix)
        #: Re-entrant: an upheld appeal is one write made of an unblock and a label.
        self.lock = threading.RLock()

    # -- plumbing --------------------------------------------------------------------------
    def _commit(self, actor: Identity, action: str, subject: str, reason: str, before: Any,
                after: Any, records: list[Record]) -> AuditRecord:
        """Publish ``records``, then audit what was published, then wait for the views.

        Records go first and the audit second, so the audit describes what really reached
        Kafka: nothing published is a 503 and nothing is audited; part of it is audited as
        partial (the reason says how much) and answered with a 503 naming what failed.
        """
        result = self.writer.write(records) if records else WriteResult([])
        if records and not result.landed:
            raise Unavailable(f"nothing was published ({result.first_error()}); retry later",
                              details={"failed": result.failures()})
        if not result.ok:
            reason = (f"{reason} [partial: {len(result.landed)} of {len(records)} records "
                      "published]")
        audit = self._audit(actor, action, subject, reason, before, after)
        self._wait_visible(result)
        if not result.ok:
            raise Unavailable(f"only {len(result.landed)} of {len(records)} records were "
                              f"published ({result.first_error()}); the audit says so",
                              details={"failed": result.failures()})
        # User text (reasons, keys) escaped: a CR/LF or ESC must not forge or hide log lines.
        log.info("%s by %s (%s) on %s: %s", action, loggable(actor.name), actor.role,
                 loggable(subject), loggable(reason))
        return audit

    def _audit(self, actor: Identity, action: str, subject: str, reason: str, before: Any,
               after: Any) -> AuditRecord:
        """Write one audit record; if even that fails, the record goes to the log in full
        (the change itself may already be published) and the client gets a 503."""
        audit = AuditRecord(id=uuid.uuid4().hex, at=time.time(), actor=actor.name,
                            role=actor.role, action=action, subject=subject, reason=reason,
                            before=before, after=after)
        result = self.writer.write([Record(AUDIT.name, subject, audit.encode())])
        if not result.ok:
            log.error("audit record not written (%s): %s", result.first_error(),
                      loggable(audit.encode().decode()))
            raise Unavailable(f"the audit record of {action} on {subject} could not be "
                              f"written ({result.first_error()}); it is in the API's log")
        self._wait_visible(result)
        return audit

    def _wait_visible(self, result: WriteResult) -> None:
        """Read-your-writes: wait (bounded) until the views hold the last offset written to
        each partition (one wait per partition, not per record: bulk writes are large)."""
        last: dict[tuple[str, int], int] = {}
        for topic, partition, offset in result.landed.values():
            last[(topic, partition)] = max(offset, last.get((topic, partition), -1))
        deadline = time.monotonic() + VISIBLE_TIMEOUT_S
        for (topic, partition), offset in last.items():
            if not self.views.wait_for(topic, partition, offset,
                                       max(0.0, deadline - time.monotonic())):
                log.warning("views did not see %s[%d]@%d within %.0fs", topic, partition,
                            offset, VISIBLE_TIMEOUT_S)
                return

    def audit_only(self, actor: Identity, action: str, subject: str, reason: str, before: Any,
                   after: Any) -> AuditRecord:
        """Audit a change that lives outside Kafka (tokens)."""
        with self.lock:
            return self._commit(actor, action, subject, reason, before, after, [])

    @staticmethod
    def _dict(policy: Policy | None) -> dict[str, Any] | None:
        return policy.to_dict() if policy is not None else None

    # -- policies --------------------------------------------------------------------------
    def put_policy(self, actor: Identity, name: str, body: Any, reason: str,
                   stage: str = "live") -> Policy:
        check_policy_name(name)
        if stage not in STAGES:
            raise BadRequest(f"stage must be one of {', '.join(STAGES)}")
        with self.lock:
            policy = candidate_policy(name, body, self.views.next_version(name), actor.name,
                                      reason)
            return self._publish(actor, policy, stage, f"policy.{stage}", reason)

    def _publish(self, actor: Identity, policy: Policy, stage: str, action: str,
                 reason: str) -> Policy:
        name = policy.name
        key = name if stage == "live" else shadow_key(name)
        before = self.views.live.get(name) if stage == "live" else self.views.shadow.get(name)
        records = [Record(POLICY.name, key, policy.encode()),
                   Record(POLICY_HISTORY.name, f"{name}:{policy.version}", policy.encode())]
        self._commit(actor, action, f"policy/{name}", reason, self._dict(before),
                     policy.to_dict(), records)
        return policy

    def rollback(self, actor: Identity, name: str, version: Any, reason: str) -> Policy:
        if isinstance(version, bool) or not isinstance(version, int):
            raise BadRequest("version must be an integer")
        with self.lock:
            old = next((p for p in self.views.versions(name) if p.version == version), None)
            if old is None:
                raise NotFound(f"policy {name} has no version {version}")
            policy = Policy.from_dict({**old.to_dict(), "version": self.views.next_version(name),
                                       "author": actor.name, "reason": reason})
            return self._publish(actor, policy, "live", "policy.rollback",
                                 f"rollback to v{version}: {reason}")

    def promote(self, actor: Identity, name: str, reason: str) -> Policy:
        with self.lock:
            shadow = self.views.shadow.get(name)
            if shadow is None:
                raise NotFound(f"policy {name} has no shadow version to promote")
            policy = Policy.from_dict({**shadow.to_dict(), "author": actor.name,
                                       "reason": reason})
            before = self.views.live.get(name)
            records = [Record(POLICY.name, name, policy.encode()),
                       Record(POLICY.name, shadow_key(name), None),
                       Record(POLICY_HISTORY.name, f"{name}:{policy.version}", policy.encode())]
            self._commit(actor, "policy.promote", f"policy/{name}", reason, self._dict(before),
                         policy.to_dict(), records)
            return policy

    def discard_shadow(self, actor: Identity, name: str, reason: str) -> None:
        with self.lock:
            shadow = self.views.shadow.get(name)
            if shadow is None:
                raise NotFound(f"policy {name} has no shadow version")
            self._commit(actor, "policy.shadow_discard", f"policy/{name}", reason,
                         shadow.to_dict(), None, [Record(POLICY.name, shadow_key(name), None)])

    def set_switches(self, actor: Identity, dry_run_all: Any, reason: str) -> ControlSwitches:
        if not isinstance(dry_run_all, bool):
            raise BadRequest("dry_run_all must be true or false")
        with self.lock:
            before = self.views.switches
            after = ControlSwitches(dry_run_all=dry_run_all, author=actor.name, reason=reason,
                                    at=time.time())
            self._commit(actor, "switches.set", "switches", reason, asdict(before),
                         asdict(after), [Record(POLICY.name, SWITCHES_KEY, after.encode())])
            return after

    # -- allowlist -------------------------------------------------------------------------
    def allow_entry(self, actor: Identity, body: Mapping[str, Any], now: float
                    ) -> tuple[str, AllowEntry]:
        """(topic key, entry) of an allowlist request: a number, a prefix or a trunk."""
        reason = reason_of(body)
        prefix = body.get("prefix", False)
        if not isinstance(prefix, bool):
            raise BadRequest("prefix must be true or false")
        raw = body.get("number")
        trunk = body.get("trunk")
        if trunk is not None:
            if raw is not None or prefix:
                raise BadRequest("give a number (or a prefix) or a trunk, not both")
            tid = check_trunk(trunk)
            key, number = trunk_key(tid), tid
        elif prefix:
            key = number = check_prefix(raw, self.settings.api_min_allow_prefix)
        else:
            key = number = normalise_number(self.plan, raw)
        if "ttl_s" in body and "expires_at" in body:
            raise BadRequest("give ttl_s or expires_at, not both")
        expires_at = 0.0
        if body.get("ttl_s") is not None:
            expires_at = now + positive_int(body["ttl_s"], "ttl_s")
        elif body.get("expires_at") is not None:
            expires_at = future_epoch(body["expires_at"], "expires_at", now)
        return key, AllowEntry(number=number, reason=reason, prefix=prefix,
                               expires_at=expires_at, author=actor.name,
                               trunk=trunk is not None)

    def add_allow(self, actor: Identity, body: Mapping[str, Any], now: float | None = None
                  ) -> AllowEntry:
        now = time.time() if now is None else now
        key, entry = self.allow_entry(actor, body, now)
        with self.lock:
            before = self.views.allow.entries.get(key)
            self._commit(actor, "allowlist.add", f"allowlist/{key}", entry.reason,
                         asdict(before) if before else None, asdict(entry),
                         [Record(ALLOWLIST.name, key, entry.encode())])
        return entry

    def remove_allow(self, actor: Identity, key: str, reason: str) -> None:
        """Remove the entry under topic key ``key`` (a number, a prefix, ``trunk:<id>``)."""
        if key in BUILTIN_ALLOW:
            raise Forbidden(f"{key} is built in ({BUILTIN_ALLOW[key]}) and cannot be "
                            "removed")
        with self.lock:
            before = self.views.allow.entries.get(key)
            if before is None:
                raise NotFound(f"{key} is not on the allowlist")
            self._commit(actor, "allowlist.remove", f"allowlist/{key}", reason,
                         asdict(before), None, [Record(ALLOWLIST.name, key, None)])

    # -- manual decisions ------------------------------------------------------------------
    def manual(self, actor: Identity, number: str, action: str, reason: str, ttl_s: int,
               extra: list[Record] | None = None) -> Decision:
        number = normalise_number(self.plan, number)
        if action == "block" and number in BUILTIN_ALLOW:
            raise Forbidden(f"{number} is built in ({BUILTIN_ALLOW[number]}) and is never "
                            "blocked")
        now = time.time()
        decision = Decision(number=number, action=action, ttl_s=ttl_s, score=0.0,
                            reasons=[reason, f"by {actor.name}"], policy=MANUAL_POLICY,
                            policy_version=MANUAL_VERSION, decided_at=now, trigger_ts=now,
                            dry_run=False)
        last = self.views.number_decisions(number)
        with self.lock:
            self._commit(actor, f"number.{action}", f"number/{number}", reason,
                         _decision_dict(last[0]) if last else None, _decision_dict(decision),
                         [Record(DECISIONS.name, number, decision.encode()), *(extra or [])])
        return decision

    def block(self, actor: Identity, number: str, body: Mapping[str, Any]) -> Decision:
        ttl = positive_int(body.get("ttl_s", DEFAULT_MANUAL_TTL_S), "ttl_s")
        return self.manual(actor, number, "block", reason_of(body), ttl)

    def unblock(self, actor: Identity, number: str, body: Mapping[str, Any]) -> Decision:
        reason = reason_of(body)
        number = normalise_number(self.plan, number)
        extra: list[Record] = []
        allow_for = body.get("allow_for_s")
        if allow_for is not None:
            entry = AllowEntry(number=number, reason=f"unblocked: {reason}",
                               expires_at=time.time() + positive_int(allow_for, "allow_for_s"),
                               author=actor.name)
            extra.append(Record(ALLOWLIST.name, number, entry.encode()))
        return self.manual(actor, number, "unblock", reason, 1, extra)

    # -- manual decisions on ranges and trunks ---------------------------------------------
    def scoped(self, actor: Identity, scope: str, target: str, action: str,
               body: Mapping[str, Any]) -> Decision:
        """A manual block or unblock of a range (``prefix``) or a trunk, audited.

        A block is refused (409, with why) when the allowlist protects the source (an
        allowlisted trunk; a range holding an emergency, allowlisted or protected number) and
        for a range shorter than ``api_min_block_prefix`` digits. A trunk block may be narrowed
        with ``match`` (see :class:`streams.scope.CallMatch`). An unblock may allowlist a trunk
        for ``allow_for_s`` seconds (a range is not: that would shield every number in it).
        """
        reason = reason_of(body)
        if scope == SCOPE_PREFIX:
            minimum = self.settings.api_min_block_prefix if action == "block" else 1
            target = check_prefix(target, minimum)
            switch = None
        elif scope == SCOPE_TRUNK:
            target = check_trunk(target)
            switch = split_trunk_id(target)[0]
        else:
            raise BadRequest(f"scope must be {SCOPE_PREFIX} or {SCOPE_TRUNK}")
        key = decision_key(scope, target)
        now = time.time()
        match: dict[str, Any] | None = None
        extra: list[Record] = []
        if action == "block":
            ttl = positive_int(body.get("ttl_s", DEFAULT_MANUAL_TTL_S), "ttl_s")
            if body.get("match") is not None:
                if scope != SCOPE_TRUNK:
                    raise BadRequest("match narrows a trunk decision; a range has none")
                try:
                    call_match = CallMatch.from_dict(body["match"])
                except ScopeError as exc:
                    raise BadRequest(str(exc)) from None
                match = call_match.to_dict() if call_match is not None else None
            with self.views.cond:
                why = self.views.allow.protects_source(scope, target, now)
            if why is not None:
                raise Conflict(f"{scope} {target} is protected and cannot be blocked: {why}")
        else:
            ttl = 1
            allow_for = body.get("allow_for_s")
            if allow_for is not None:
                if scope != SCOPE_TRUNK:
                    raise BadRequest("allow_for_s allowlists a trunk; a range is not "
                                     "allowlisted on unblock")
                entry = AllowEntry(number=target, reason=f"unblocked: {reason}", trunk=True,
                                   expires_at=now + positive_int(allow_for, "allow_for_s"),
                                   author=actor.name)
                extra.append(Record(ALLOWLIST.name, key, entry.encode()))
        decision = Decision(number=key, action=action, ttl_s=ttl, score=0.0,
                            reasons=[reason, f"by {actor.name}"], policy=MANUAL_POLICY,
                            policy_version=MANUAL_VERSION, decided_at=now, trigger_ts=now,
                            dry_run=False, scope=scope, target=target, switch=switch,
                            match=match)
        last = self.views.number_decisions(key)
        with self.lock:
            self._commit(actor, f"{scope}.{action}", f"{scope}/{target}", reason,
                         _decision_dict(last[0]) if last else None, _decision_dict(decision),
                         [Record(DECISIONS.name, key, decision.encode()), *extra])
        return decision

    # -- feedback --------------------------------------------------------------------------
    def label_from(self, obj: Any, source_default: str) -> Label:
        """A validated label from one JSON object / CSV row (422 names what is wrong)."""
        if not isinstance(obj, Mapping):
            raise Unprocessable("a label must be an object")
        unknown = set(obj) - {"id", "number", "label", "note", "source", "ts"}
        if unknown:
            raise Unprocessable(f"unknown label fields: {', '.join(sorted(unknown))}")
        label_id = obj.get("id")
        if not isinstance(label_id, str) or not label_id.strip() or len(label_id) > MAX_ID_LEN:
            raise Unprocessable(f"id must be a non-empty string of at most {MAX_ID_LEN} "
                                "characters (it makes intake idempotent)")
        kind = obj.get("label")
        if kind not in LABEL_TARGET:
            raise Unprocessable(f"label must be one of {', '.join(LABEL_TARGET)}; got {kind!r}")
        try:
            number = normalise_number(self.plan, obj.get("number"))
        except BadRequest as exc:
            raise Unprocessable(exc.message) from None
        note = obj.get("note") or ""
        source = obj.get("source") or source_default
        if not isinstance(note, str) or len(note) > MAX_NOTE_LEN:
            raise Unprocessable(f"note must be text of at most {MAX_NOTE_LEN} characters")
        if not isinstance(source, str) or len(source) > MAX_ID_LEN:
            raise Unprocessable("source must be a short string")
        ts = obj.get("ts")
        if ts in (None, ""):
            ts = time.time()
        try:
            ts = float(ts)
        except (TypeError, ValueError):
            raise Unprocessable(f"ts must be epoch seconds; got {ts!r}") from None
        if not math.isfinite(ts) or ts <= 0 or \
                ts > time.time() + self.settings.max_future_skew_s:
            raise Unprocessable(f"ts must be a positive epoch time in seconds, not in the "
                                f"future; got {obj.get('ts')!r}")
        return Label(number=number, label=kind, ts=ts, id=label_id.strip(), source=source,
                     note=note)

    def add_labels(self, actor: Identity, labels: list[Label]) -> "LabelIntake":
        """Publish the labels whose id was never seen, and audit those that were published.

        A batch the broker takes only in part is reported as such (``failed_total`` and the
        first failures by id): the published part is audited and stays published, and since
        label ids make intake idempotent, sending the same file again publishes the rest.
        """
        with self.lock:
            fresh: dict[str, Label] = {}
            for label in labels:
                if not self.views.has_label_id(label.id) and label.id not in fresh:
                    fresh[label.id] = label
            intake = LabelIntake(accepted=0, duplicates=len(labels) - len(fresh))
            if not fresh:
                return intake
            batch = list(fresh.values())
            result = self.writer.write([Record(FEEDBACK.name, lb.number, lb.encode())
                                        for lb in batch])
            intake.failed_total = len(result.failed)
            intake.failed = [{"id": batch[i].id, "error": err}
                             for i, err in sorted(result.failed.items())[:MAX_REPORTED_FAILURES]]
            published = [batch[i] for i in sorted(result.landed)]
            intake.accepted = len(published)
            if not published:
                raise Unavailable(f"no label was published ({result.first_error()}); retry "
                                  "later (label ids make a retry safe)",
                                  details=intake.answer())
            subject = f"label/{published[0].id}" if len(published) == 1 else "labels/bulk"
            after: Any = asdict(published[0]) if len(published) == 1 and not result.failed \
                else {"ids": [lb.id for lb in published[:MAX_AUDITED_IDS]],
                      "count": len(published), "failed": len(result.failed)}
            reason = "feedback intake" if result.ok else \
                f"feedback intake [partial: {len(published)} of {len(batch)} published]"
            self._audit(actor, "feedback.add", subject, reason, None, after)
            self._wait_visible(result)
            return intake

    # -- appeals ---------------------------------------------------------------------------
    def create_appeal(self, actor: Identity, body: Mapping[str, Any]) -> dict[str, Any]:
        number = normalise_number(self.plan, body.get("number"))
        fields: dict[str, str] = {}
        for name in ("appellant", "contact", "note"):
            value = body.get(name, "")
            if not isinstance(value, str) or len(value) > MAX_NOTE_LEN:
                raise BadRequest(f"{name} must be text of at most {MAX_NOTE_LEN} characters")
            fields[name] = value.strip()
        if not fields["appellant"] or not fields["contact"]:
            raise BadRequest("an appeal needs the appellant and how to reach them (contact)")
        appeal = {"id": uuid.uuid4().hex[:16], "number": number, **fields,
                  "status": "pending", "at": time.time()}
        with self.lock:
            self._commit(actor, "appeal.create", f"{APPEAL_SUBJECT}{appeal['id']}",
                         fields["note"] or "appeal", None, appeal, [])
        return appeal

    def decide_appeal(self, actor: Identity, appeal_id: str, body: Mapping[str, Any]
                      ) -> dict[str, Any]:
        outcome = body.get("outcome")
        if outcome not in APPEAL_OUTCOMES:
            raise BadRequest(f"outcome must be one of {', '.join(APPEAL_OUTCOMES)}")
        reason = reason_of(body)
        allow_for = positive_int(body.get("allow_for_s", self.settings.api_appeal_allow_s),
                                 "allow_for_s")
        with self.lock:
            return self._decide_appeal(actor, appeal_id, outcome, reason, allow_for)

    def _decide_appeal(self, actor: Identity, appeal_id: str, outcome: str, reason: str,
                       allow_for: int) -> dict[str, Any]:
        with self.views.cond:
            appeal = self.views.appeals.get(appeal_id)
        if appeal is None:
            raise NotFound(f"no appeal {appeal_id}")
        if appeal.get("status") != "pending":
            raise Conflict(f"appeal {appeal_id} is already {appeal.get('status')}")
        now = time.time()
        number = appeal["number"]
        label = Label(number=number, label=APPEAL_LABEL[outcome], ts=now,
                      id=f"appeal-{appeal_id}", source="appeal", note=reason,
                      appellant=appeal.get("appellant", ""), contact=appeal.get("contact", ""))
        decided = {**appeal, "status": outcome, "decided_by": actor.name, "decided_at": now,
                   "reason": reason}
        records = [Record(FEEDBACK.name, number, label.encode())]
        if outcome == "upheld":
            decided["allowlisted_until"] = now + allow_for
            self.unblock(actor, number, {"reason": f"appeal {appeal_id} upheld: {reason}",
                                         "allow_for_s": allow_for})
        self._commit(actor, f"appeal.{outcome}", f"{APPEAL_SUBJECT}{appeal_id}", reason,
                     appeal, decided, records)
        return decided


@dataclass
class LabelIntake:
    """The answer to a label intake: what was published, seen before, or not published."""

    accepted: int
    duplicates: int
    failed_total: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)

    def answer(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates,
                "failed_total": self.failed_total, "failed": self.failed}


def _decision_dict(decision: Decision) -> dict[str, Any]:
    return asdict(decision)


__all__ = ["Operations", "Writer", "MemoryWriter", "Record", "LabelIntake", "candidate_policy",
           "reason_of", "positive_int", "normalise_number", "MANUAL_POLICY"]
