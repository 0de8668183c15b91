"""Ranges and trunks (issue 10): look-ups, manual block / unblock, trunk allowlist entries, and
the campaigns being stopped.

Routes name a range by its digits (``/api/v1/prefixes/86170123``) and a trunk by its switch and
trunk (``/api/v1/trunks/sw-2/ent-7``), never by its topic key: ``trunk:sw-2/ent-7`` holds a
'/' that would need encoding in one path segment. A trunk part that itself holds a '/' is sent
as ``%2F`` (aiohttp decodes it after routing).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from aiohttp import web

from services.api.app import blocking, ctx, identity, json_response, read_object, requires
from services.api.errors import BadRequest
from services.api.ops import reason_of
from services.api.present import decision_view
from services.api.routes_data import current_of
from services.api.targets import check_prefix, trunk_from_path, trunk_key
from streams.scope import SCOPE_PREFIX, SCOPE_TRUNK, decision_key

routes = web.RouteTableDef()
#: A range looked up may be as short as one digit (looking is harmless; blocking is not).
MIN_LOOKUP_PREFIX = 1


def source_view(request: web.Request, scope: str, target: str) -> dict[str, Any]:
    """Everything the API knows of a range or a trunk."""
    c = ctx(request)
    key = decision_key(scope, target)
    now = time.time()
    decisions = c.views.number_decisions(key)
    score = c.views.score_of(key)
    with c.views.cond:
        protected = c.views.allow.protects_source(scope, target, now)
    return {"key": key, "scope": scope, "target": target, "protected": protected,
            "current": current_of(decisions, now),
            "decisions": [decision_view(d, now) for d in decisions],
            "score": asdict(score) if score else None,
            "labels": [asdict(s.label) for s in c.views.number_labels(key)],
            "acks": [asdict(a) for a in c.views.number_acks(key)]}


def _prefix(request: web.Request, minimum: int = MIN_LOOKUP_PREFIX) -> str:
    return check_prefix(request.match_info["digits"], minimum)


def _trunk(request: web.Request) -> str:
    return trunk_from_path(request.match_info["switch"], request.match_info["trunk"])


# -- look-ups ------------------------------------------------------------------------------
@routes.get("/api/v1/prefixes/{digits}")
async def prefix_lookup(request: web.Request) -> web.Response:
    return json_response(source_view(request, SCOPE_PREFIX, _prefix(request)))


@routes.get("/api/v1/trunks/{switch}/{trunk}")
async def trunk_lookup(request: web.Request) -> web.Response:
    return json_response(source_view(request, SCOPE_TRUNK, _trunk(request)))


@routes.get("/api/v1/campaigns")
async def campaigns(request: web.Request) -> web.Response:
    """Ranges and trunks under a decision in force (dry-run included: the console marks it)."""
    scope = request.query.get("scope", "")
    if scope and scope not in (SCOPE_PREFIX, SCOPE_TRUNK):
        raise BadRequest(f"scope must be {SCOPE_PREFIX} or {SCOPE_TRUNK}")
    now = time.time()
    live = [d for d in ctx(request).views.live_scoped(now) if not scope or d.scope == scope]
    return json_response({"campaigns": [decision_view(d, now) for d in live]})


# -- manual decisions ----------------------------------------------------------------------
async def _act(request: web.Request, scope: str, target: str, action: str) -> web.Response:
    body = await read_object(request)
    c = ctx(request)
    decision = await blocking(c.ops.scoped, identity(request), scope, target, action, body)
    return json_response({"decision": decision_view(decision, time.time())})


@routes.post("/api/v1/prefixes/{digits}/block")
@requires("analyst")
async def prefix_block(request: web.Request) -> web.Response:
    # Length is checked by ops (api_min_block_prefix), so the message names the setting's rule.
    return await _act(request, SCOPE_PREFIX, request.match_info["digits"], "block")


@routes.post("/api/v1/prefixes/{digits}/unblock")
@requires("analyst")
async def prefix_unblock(request: web.Request) -> web.Response:
    return await _act(request, SCOPE_PREFIX, request.match_info["digits"], "unblock")


@routes.post("/api/v1/trunks/{switch}/{trunk}/block")
@requires("analyst")
async def trunk_block(request: web.Request) -> web.Response:
    return await _act(request, SCOPE_TRUNK, _trunk(request), "block")


@routes.post("/api/v1/trunks/{switch}/{trunk}/unblock")
@requires("analyst")
async def trunk_unblock(request: web.Request) -> web.Response:
    return await _act(request, SCOPE_TRUNK, _trunk(request), "unblock")


# -- trunk allowlist entries ---------------------------------------------------------------
@routes.delete("/api/v1/allowlist/trunk/{switch}/{trunk}")
@requires("analyst")
async def allow_remove_trunk(request: web.Request) -> web.Response:
    c = ctx(request)
    await blocking(c.ops.remove_allow, identity(request), trunk_key(_trunk(request)),
                   reason_of(dict(request.query)))
    return json_response({"ok": True})


__all__ = ["routes"]
