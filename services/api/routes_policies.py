"""Policy routes: list, read, create/update (live or shadow), versions, rollback, promote."""

from __future__ import annotations

from aiohttp import web

from services.api.app import blocking, ctx, identity, json_response, read_object, requires
from services.api.errors import BadRequest, NotFound
from services.api.ops import reason_of

routes = web.RouteTableDef()


def _pair(request: web.Request, name: str) -> dict[str, object]:
    views = ctx(request).views
    with views.cond:
        live, shadow = views.live.get(name), views.shadow.get(name)
    return {"live": live.to_dict() if live else None,
            "shadow": shadow.to_dict() if shadow else None}


@routes.get("/api/v1/policies")
async def list_policies(request: web.Request) -> web.Response:
    views = ctx(request).views
    from dataclasses import asdict

    return json_response({"policies": [_pair(request, n) for n in views.policy_names()],
                          "switches": asdict(views.switches)})


@routes.get("/api/v1/policies/{name}")
async def get_policy(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    pair = _pair(request, name)
    if pair["live"] is None and pair["shadow"] is None:
        raise NotFound(f"no policy named {name!r}")
    return json_response(pair)


@routes.put("/api/v1/policies/{name}")
@requires("analyst")
async def put_policy(request: web.Request) -> web.Response:
    body = await read_object(request)
    if "policy" not in body:
        raise BadRequest("body must be {\"policy\": {...}, \"reason\": \"...\", "
                         "\"stage\": \"live\"|\"shadow\"}")
    unknown = set(body) - {"policy", "reason", "stage"}
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    c = ctx(request)
    policy = await blocking(c.ops.put_policy, identity(request), request.match_info["name"],
                            body["policy"], reason_of(body), body.get("stage", "live"))
    return json_response({"policy": policy.to_dict()})


@routes.get("/api/v1/policies/{name}/versions")
async def versions(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    found = ctx(request).views.versions(name)
    if not found:
        raise NotFound(f"no policy named {name!r}")
    return json_response({"versions": [p.to_dict() for p in found]})


@routes.post("/api/v1/policies/{name}/rollback")
@requires("analyst")
async def rollback(request: web.Request) -> web.Response:
    body = await read_object(request)
    c = ctx(request)
    policy = await blocking(c.ops.rollback, identity(request), request.match_info["name"],
                            body.get("version"), reason_of(body))
    return json_response({"policy": policy.to_dict()})


@routes.post("/api/v1/policies/{name}/promote")
@requires("analyst")
async def promote(request: web.Request) -> web.Response:
    body = await read_object(request)
    c = ctx(request)
    policy = await blocking(c.ops.promote, identity(request), request.match_info["name"],
                            reason_of(body))
    return json_response({"policy": policy.to_dict()})


@routes.delete("/api/v1/policies/{name}/shadow")
@requires("analyst")
async def discard_shadow(request: web.Request) -> web.Response:
    c = ctx(request)
    await blocking(c.ops.discard_shadow, identity(request), request.match_info["name"],
                   reason_of(dict(request.query)))
    return json_response({"ok": True})
