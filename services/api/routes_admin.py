"""Public routes (health, console page and assets) and identity, tokens, switches, OpenAPI."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

from aiohttp import web

from services.api.app import (blocking, ctx, identity, json_response, read_object, requires)
from services.api.auth import TokenError
from services.api.errors import BadRequest, NotFound
from services.api.ops import reason_of

routes = web.RouteTableDef()
CONSOLE_DIR = Path(__file__).resolve().parent / "console"
#: Console asset names: one flat folder, no dot files, no path separators.
ASSET_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """503 when the API would answer wrong (stale views) or cannot write (Kafka does not take
    its records): a load balancer should send analysts elsewhere, not let them believe a kill
    switch went through."""
    c = ctx(request)
    feed = c.feed
    writes = await blocking(c.ops.writer.health)
    body: dict[str, object] = {"ok": True,
                               "caught_up": bool(feed is None or feed.caught_up.is_set()),
                               "writes": writes}
    if feed is not None and feed.failed is not None:
        # Stale views would answer wrong; say so to whoever checks health (load balancer).
        return json_response({**body, "ok": False,
                              "error": f"topic views stopped: {feed.failed}"}, 503)
    if not writes["ok"]:
        return json_response({**body, "ok": False,
                              "error": f"writes are failing: {writes.get('error')}"}, 503)
    return json_response(body)


@routes.get("/")
async def console_page(request: web.Request) -> web.StreamResponse:  # noqa: ARG001
    index = CONSOLE_DIR / "index.html"
    if not index.is_file():
        raise NotFound("the analyst console is not installed (services/api/console/)")
    return web.FileResponse(index)


@routes.get("/console/{file}")
async def console_asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["file"]
    path = CONSOLE_DIR / name
    if not ASSET_NAME.match(name) or not path.is_file():
        raise NotFound(f"no console file {name!r}")
    return web.FileResponse(path)


@routes.get("/api/v1/whoami")
async def whoami(request: web.Request) -> web.Response:
    who = identity(request)
    return json_response({"name": who.name, "role": who.role})


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:  # noqa: ARG001
    from services.api.openapi import document

    return json_response(document())


@routes.get("/api/v1/tokens")
@requires("admin")
async def list_tokens(request: web.Request) -> web.Response:
    return json_response({"tokens": ctx(request).tokens.listing()})


@routes.post("/api/v1/tokens")
@requires("admin")
async def create_token(request: web.Request) -> web.Response:
    body = await read_object(request)
    c, who = ctx(request), identity(request)
    name, role = body.get("name"), body.get("role")
    reason = reason_of(body, required=False)
    try:
        token = await blocking(c.tokens.create, name, role)
    except TokenError as exc:
        raise BadRequest(str(exc)) from None
    try:
        await blocking(c.ops.audit_only, who, "token.create", f"token/{name}",
                       reason, None, {"name": name, "role": role})
    except Exception:
        # No unaudited access: a token whose creation cannot be audited is taken back.
        await blocking(c.tokens.revoke, name)
        raise
    return json_response({"name": name, "role": role, "token": token}, 201)


@routes.delete("/api/v1/tokens/{name}")
@requires("admin")
async def revoke_token(request: web.Request) -> web.Response:
    c, who, name = ctx(request), identity(request), request.match_info["name"]
    before = next((t for t in c.tokens.listing() if t["name"] == name), None)
    try:
        revoked = await blocking(c.tokens.revoke, name)
    except TokenError as exc:
        raise BadRequest(str(exc)) from None
    if not revoked:
        raise NotFound(f"no token named {name!r}")
    await blocking(c.ops.audit_only, who, "token.revoke", f"token/{name}",
                   request.query.get("reason", ""), before, None)
    return json_response({"ok": True})


@routes.get("/api/v1/switches")
async def get_switches(request: web.Request) -> web.Response:
    return json_response(asdict(ctx(request).views.switches))


@routes.put("/api/v1/switches")
@requires("admin")
async def put_switches(request: web.Request) -> web.Response:
    body = await read_object(request)
    c = ctx(request)
    after = await blocking(c.ops.set_switches, identity(request), body.get("dry_run_all"),
                           reason_of(body))
    return json_response(asdict(after))
