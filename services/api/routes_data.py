"""Allowlist, numbers, decisions, offenders, feedback, appeals, what-if and audit routes."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from aiohttp import web

from services.api.app import (blocking, ctx, identity, json_response, read_object, requires)
from services.api.auth import Identity
from services.api.errors import ApiError, BadRequest, TooLarge, Unavailable, Unprocessable
from services.api.feedback_io import (BulkFormatError, BulkTooManyRows, first_rejections,
                                      parse_bulk)
from services.api.ops import (LabelIntake, Operations, candidate_policy, check_policy_name,
                              normalise_number, reason_of)
from services.api.present import decision_view
from services.api.whatif import what_if
from streams.policy import BUILTIN_ALLOW, Policy
from streams.schema import Decision, Label
from streams.scope import parse_key

routes = web.RouteTableDef()
MAX_LIMIT = 1000
DEFAULT_RECENT = 50
DEFAULT_OFFENDERS = 20
DEFAULT_AUDIT = 100
APPEAL_STATUSES = ("pending", "upheld", "denied")
#: Bulk bodies are read in chunks of this size, so the limit is enforced while reading.
BULK_CHUNK = 64 * 1024
#: The longest what-if window accepted: scores are kept 7 days (topic retention).
MAX_WHATIF_WINDOW_S = 7 * 86_400


def _limit(request: web.Request, default: int) -> int:
    raw = request.query.get("limit", str(default))
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"limit must be an integer, got {raw!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise BadRequest(f"limit must be in 1..{MAX_LIMIT}")
    return value


def current_of(decisions: list[Decision], now: float) -> dict[str, Any] | None:
    """The action in force from a number's decisions (newest first), or None."""
    if not decisions or decisions[0].action == "unblock":
        return None
    last = decisions[0]
    until = last.decided_at + last.ttl_s
    if until <= now:
        return None
    return {"action": last.action, "until": until, "dry_run": last.dry_run,
            "policy": last.policy, "policy_version": last.policy_version}


# -- what-if -------------------------------------------------------------------------------
@routes.post("/api/v1/whatif")
async def whatif(request: web.Request) -> web.Response:
    body = await read_object(request)
    c = ctx(request)
    window = body.get("window_s", c.settings.api_whatif_window_s)
    if isinstance(window, bool) or not isinstance(window, (int, float)) or \
            not 0 < window <= MAX_WHATIF_WINDOW_S:
        raise BadRequest(f"window_s must be seconds in (0, {MAX_WHATIF_WINDOW_S}]")
    raw = body.get("policy")
    if not isinstance(raw, dict):
        raise BadRequest("'policy' must be a JSON object of policy fields")
    name = check_policy_name(str(raw.get("name") or c.settings.policy_name))
    with c.views.cond:
        live = c.views.live.get(name) or Policy(name=name)
    candidate = candidate_policy(name, raw, live.version + 1, identity(request).name,
                                 "what-if")
    now = time.time()
    records = c.views.recent_scores(now - window)
    labels = {n: [s.label for s in seen] for n, seen in c.views.labels_by_number().items()}
    with c.views.cond:
        result = what_if(records, live, candidate, c.views.allow, labels, now, window,
                         neighbour_tail=c.settings.source_neighbour_tail)
    return json_response(result)


# -- allowlist -----------------------------------------------------------------------------
@routes.get("/api/v1/allowlist")
async def allowlist(request: web.Request) -> web.Response:
    views = ctx(request).views
    with views.cond:
        entries = [asdict(e) for e in views.allow.entries.values()]
    return json_response({"builtin": [{"number": n, "reason": r}
                                      for n, r in BUILTIN_ALLOW.items()],
                          "entries": sorted(entries, key=lambda e: e["number"])})


@routes.post("/api/v1/allowlist")
@requires("analyst")
async def allow_add(request: web.Request) -> web.Response:
    body = await read_object(request)
    c = ctx(request)
    entry = await blocking(c.ops.add_allow, identity(request), body)
    return json_response({"entry": asdict(entry)}, 201)


@routes.delete("/api/v1/allowlist/{number}")
@requires("analyst")
async def allow_remove(request: web.Request) -> web.Response:
    c = ctx(request)
    await blocking(c.ops.remove_allow, identity(request), request.match_info["number"],
                   reason_of(dict(request.query)))
    return json_response({"ok": True})


# -- numbers and decisions -----------------------------------------------------------------
@routes.get("/api/v1/numbers/{number}")
async def lookup(request: web.Request) -> web.Response:
    c = ctx(request)
    number = normalise_number(c.ops.plan, request.match_info["number"])
    now = time.time()
    decisions = c.views.number_decisions(number)
    score = c.views.score_of(number)
    with c.views.cond:
        allowlisted = c.views.allow.match(number, now)
    return json_response({
        "number": number, "allowlisted": allowlisted, "current": current_of(decisions, now),
        "decisions": [asdict(d) for d in decisions],
        # Ranges holding the number whose decision is in force (trunk decisions cannot be
        # found from a number: the trunk is a property of each call).
        "covered_by": [decision_view(d, now) for d in c.views.covering_prefix_decisions(number)
                       if current_of([d], now) is not None],
        "score": asdict(score) if score else None,
        "labels": [asdict(s.label) for s in c.views.number_labels(number)],
        "acks": [asdict(a) for a in c.views.number_acks(number)]})


@routes.post("/api/v1/numbers/{number}/block")
@requires("analyst")
async def block(request: web.Request) -> web.Response:
    body = await read_object(request)
    c = ctx(request)
    decision = await blocking(c.ops.block, identity(request), request.match_info["number"],
                              body)
    return json_response({"decision": asdict(decision)})


@routes.post("/api/v1/numbers/{number}/unblock")
@requires("analyst")
async def unblock(request: web.Request) -> web.Response:
    body = await read_object(request)
    c = ctx(request)
    decision = await blocking(c.ops.unblock, identity(request), request.match_info["number"],
                              body)
    return json_response({"decision": asdict(decision)})


@routes.get("/api/v1/decisions/recent")
async def recent(request: web.Request) -> web.Response:
    decisions = ctx(request).views.recent_decisions(_limit(request, DEFAULT_RECENT))
    now = time.time()
    return json_response({"decisions": [decision_view(d, now) for d in decisions]})


@routes.get("/api/v1/offenders")
async def offenders(request: web.Request) -> web.Response:
    c = ctx(request)
    limit = _limit(request, DEFAULT_OFFENDERS)
    now = time.time()
    top = sorted(c.views.recent_scores(now - c.settings.api_whatif_window_s),
                 key=lambda r: (-r.score, r.number))[:limit]
    out = []
    for rec in top:
        decisions = c.views.number_decisions(rec.number)
        current = current_of(decisions, now)
        out.append({"number": rec.number, "scope": parse_key(rec.number)[0],
                    "score": rec.score,
                    "action": current["action"] if current else (rec.action or None),
                    "attempts_1h": rec.features.get("attempts_1h", 0.0),
                    "reasons": decisions[0].reasons if decisions else []})
    return json_response({"offenders": out})


# -- feedback ------------------------------------------------------------------------------
@routes.post("/api/v1/feedback")
@requires("analyst")
async def feedback(request: web.Request) -> web.Response:
    body = await read_object(request)
    c, who = ctx(request), identity(request)
    label = c.ops.label_from(body, source_default=f"api:{who.name}")
    intake: LabelIntake = await blocking(c.ops.add_labels, who, [label])
    return json_response({"accepted": intake.accepted, "duplicates": intake.duplicates})


def _bulk_labels(ops: Operations, who: Identity, body: bytes, content_type: str
                 ) -> tuple[list[Label], list[dict[str, Any]]]:
    """Parse and validate a bulk file (in a worker thread: a large file takes seconds of CPU
    that must not stall the event loop and with it ``/healthz`` and every other request)."""
    try:
        rows, rejected = parse_bulk(body, content_type)
    except BulkFormatError as exc:
        raise BadRequest(str(exc)) from None
    except BulkTooManyRows as exc:
        raise TooLarge(str(exc)) from None
    labels = []
    for line, obj in rows:
        try:
            labels.append(ops.label_from(obj, source_default=f"bulk:{who.name}"))
        except (Unprocessable, BadRequest) as exc:
            rejected.append({"line": line, "error": exc.message})
    return labels, rejected


@routes.post("/api/v1/feedback/bulk")
@requires("analyst")
async def feedback_bulk(request: web.Request) -> web.Response:
    """Answers what was published (``accepted``), seen before (``duplicates``), not valid
    (``rejected``: the first rows by line, ``rejected_total``) and valid but not published
    (``failed``, ``failed_total``: then with a 503, the published part stays published)."""
    c, who = ctx(request), identity(request)
    limit = c.settings.api_max_bulk_bytes
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"bulk body larger than {limit} bytes; split the file")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(BULK_CHUNK):
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"bulk body larger than {limit} bytes; split the file")
        chunks.append(chunk)
    labels, rejected = await blocking(_bulk_labels, c.ops, who, b"".join(chunks),
                                      request.content_type)
    answer: dict[str, Any] = {"rejected": first_rejections(rejected),
                              "rejected_total": len(rejected)}
    try:
        intake = await blocking(c.ops.add_labels, who, labels) if labels else LabelIntake(0, 0)
    except Unavailable as exc:
        raise ApiError(exc.message, exc.status, {**exc.details, **answer}) from None
    answer.update(intake.answer())
    if intake.failed_total:
        raise Unavailable(f"{intake.accepted} labels published, {intake.failed_total} not "
                          f"(Kafka: {intake.failed[0]['error']}); send the file again to "
                          "publish the rest (label ids make it safe)", details=answer)
    return json_response(answer)


# -- appeals -------------------------------------------------------------------------------
@routes.post("/api/v1/appeals")
@requires("analyst")
async def appeal_create(request: web.Request) -> web.Response:
    body = await read_object(request)
    c = ctx(request)
    appeal = await blocking(c.ops.create_appeal, identity(request), body)
    return json_response({"appeal": appeal}, 201)


@routes.get("/api/v1/appeals")
async def appeals(request: web.Request) -> web.Response:
    status = request.query.get("status", "")
    if status and status not in APPEAL_STATUSES:
        raise BadRequest(f"status must be one of {', '.join(APPEAL_STATUSES)}")
    views = ctx(request).views
    with views.cond:
        found = [a for _, a in views.appeals.items() if not status or a.get("status") == status]
    return json_response({"appeals": sorted(found, key=lambda a: -a.get("at", 0))})


@routes.post("/api/v1/appeals/{id}/decision")
@requires("analyst")
async def appeal_decide(request: web.Request) -> web.Response:
    body = await read_object(request)
    c = ctx(request)
    appeal = await blocking(c.ops.decide_appeal, identity(request), request.match_info["id"],
                            body)
    return json_response({"appeal": appeal})


# -- audit ---------------------------------------------------------------------------------
@routes.get("/api/v1/audit")
async def audit(request: web.Request) -> web.Response:
    records = ctx(request).views.audit_records(request.query.get("subject", ""),
                                               _limit(request, DEFAULT_AUDIT))
    return json_response({"records": [asdict(r) for r in records]})


__all__ = ["routes", "current_of"]
