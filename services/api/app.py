"""The control API application: app factory, middlewares, and ``dialguard api``.

Middlewares, outermost first: security headers (every answer, errors included), metrics (every
request counted by route template, method and status, timed by route), errors (any exception becomes ``{"error": ...}`` with a 4xx, or a 500
whose details go to the log, never to the client), auth (``/api/v1/...`` needs a bearer token
whose role reaches the handler's ``required_role``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from services.api import metrics
from services.api.auth import Identity, TokenStore
from services.api.errors import ApiError, BadRequest, Forbidden, TooLarge, Unauthorized
from services.api.guard import Guard
from services.api.logsafe import loggable
from services.api.ops import Operations
from services.api.views import ViewFeed, Views
from services.api.writer import Writer
from services.settings import Settings

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1/"
#: How long startup waits for the views to catch up with the topics before serving anyway.
CATCHUP_TIMEOUT_S = 60.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: The console's Content-Security-Policy. As an HTTP header (not only the page's meta tag) it
#: covers every answer, and ``frame-ancestors`` (ignored in a meta tag) forbids framing the
#: console into another site (clickjacking a kill switch).
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
                           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
#: API answers hold phone numbers and tokens: no cache (browser or proxy) keeps them.
API_CACHE_CONTROL = "no-store"


@dataclass
class Context:
    settings: Settings
    views: Views
    ops: Operations
    tokens: TokenStore
    guard: Guard
    feed: ViewFeed | None = None


CTX = web.AppKey("dialguard_ctx", Context)
IDENTITY = web.RequestKey("dialguard_identity", Identity)
GUARD_TASK = web.AppKey("dialguard_guard_task", asyncio.Task)


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS), status=status,
                        content_type="application/json")


def requires(role: str) -> Callable[[Handler], Handler]:
    """Mark a handler with the least role that may call it (checked by the auth middleware)."""
    def mark(handler: Handler) -> Handler:
        handler.required_role = role  # type: ignore[attr-defined]
        return handler
    return mark


def ctx(request: web.Request) -> Context:
    return request.app[CTX]


def identity(request: web.Request) -> Identity:
    return request[IDENTITY]


async def read_json(request: web.Request) -> Any:
    """The request's JSON body (413 beyond the body limit, 400 when it is not JSON)."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge(f"request body larger than {request.app[CTX].settings.api_max_body_bytes}"
                       " bytes") from None
    if not raw:
        raise BadRequest("a JSON body is required")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc.msg}") from None


async def read_object(request: web.Request) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


async def blocking(func: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking write (Kafka flush, wait for the views) off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else metrics.UNMATCHED_ROUTE


@web.middleware
async def security_headers_middleware(request: web.Request, handler: Handler
                                      ) -> web.StreamResponse:
    """The same security headers on every answer, whatever produced it."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # < 400 (redirects): errors are answers already
        exc.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    if request.path.startswith(API_PREFIX):
        response.headers["Cache-Control"] = API_CACHE_CONTROL
    return response


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = _route_of(request)
        metrics.REQUESTS.labels(route, request.method, str(status)).inc()
        metrics.REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response({**exc.details, "error": exc.message}, exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: f"no such route: {request.method} {request.path}",
                   405: f"method {request.method} not allowed on {request.path}",
                   413: "request body too large"}.get(exc.status, exc.reason)
        return json_response({"error": message}, exc.status)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - the client gets no trace; the log gets all of it
        log.exception("unhandled error on %s %s", request.method, loggable(request.path))
        return json_response({"error": "internal error (logged on the server)"}, 500)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(API_PREFIX):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    who = ctx(request).tokens.authenticate(token.strip())
    if who is None:
        raise Unauthorized("invalid or revoked token")
    request[IDENTITY] = who
    required = getattr(request.match_info.handler, "required_role", "viewer")
    if not who.allows(required):
        raise Forbidden(f"role {who.role} may not do this; it needs {required}")
    return await handler(request)


async def _start_background(app: web.Application) -> None:
    c = app[CTX]
    if c.feed is not None:
        c.feed.start()
        caught_up = await asyncio.get_running_loop().run_in_executor(
            None, c.feed.caught_up.wait, CATCHUP_TIMEOUT_S)
        if not caught_up:
            log.warning("views not caught up after %.0fs; serving what they hold",
                        CATCHUP_TIMEOUT_S)
    app[GUARD_TASK] = asyncio.create_task(c.guard.run())


async def _stop_background(app: web.Application) -> None:
    task = app.get(GUARD_TASK)
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    c = app[CTX]
    if c.feed is not None:
        c.feed.stop()
        await asyncio.get_running_loop().run_in_executor(None, c.feed.join, 5.0)


def create_app(settings: Settings, views: Views | None = None, ops: Operations | None = None,
               tokens: TokenStore | None = None, with_feed: bool = True) -> web.Application:
    """The API. Tests pass their own views/ops (``with_feed=False``) to run without Kafka."""
    from services.api import routes_admin, routes_data, routes_policies, routes_sources

    views = views or Views(settings.api_view_max_numbers)
    ops = ops or Operations(settings, views, Writer(settings))
    tokens = tokens or TokenStore(settings.api_tokens_path, settings.api_tokens)
    app = web.Application(client_max_size=settings.api_max_body_bytes,
                          middlewares=[security_headers_middleware, metrics_middleware,
                                       error_middleware, auth_middleware])
    app[CTX] = Context(settings, views, ops, tokens,
                       Guard(ops, settings.api_guard_interval_s),
                       ViewFeed(settings, views) if with_feed else None)
    for module in (routes_admin, routes_policies, routes_data, routes_sources):
        app.router.add_routes(module.routes)
    app.on_startup.append(_start_background)
    app.on_cleanup.append(_stop_background)
    return app


def serve(settings: Settings) -> int:
    """``dialguard api``: serve until interrupted; metrics on ``api_metrics_port``."""
    from prometheus_client import start_http_server

    start_http_server(settings.api_metrics_port, addr=settings.api_host)
    app = create_app(settings)
    print(f"control API on http://{settings.api_host}:{settings.api_port}/ (console at /, "
          f"OpenAPI at /api/v1/openapi.json); metrics on "
          f"http://{settings.api_host}:{settings.api_metrics_port}/metrics; tokens in "
          f"{settings.api_tokens_path}", flush=True)
    web.run_app(app, host=settings.api_host, port=settings.api_port, print=None,
                access_log=None, handle_signals=True)
    return 0
