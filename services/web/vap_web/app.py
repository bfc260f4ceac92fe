"""The HTTP side: pages, JSON for the pages, the live WebSocket, login and logout.

    GET  /                          camera list (health, fps, counts of the last hour)
    GET  /camera/<scenario id>      live view of one camera
    GET  /login, POST /login        token form; sets the HttpOnly login cookie
    POST /logout                    clears it
    GET  /api/cameras               the list as JSON
    GET  /api/cameras/<id>          one camera with its rules (lines, zones) and count interval
    GET  /api/cameras/<id>/counts   counts per rule and interval (?minutes=60)
    GET  /api/cameras/<id>/live     WebSocket: binary frame messages (header + JPEG) and JSON texts
    GET  /healthz                   liveness, no token

Everything but /login, /healthz and /static needs a token the control API accepts (see auth.py). Control
API errors map to HTTP ones (NOT_FOUND -> 404, INVALID_ARGUMENT -> 400, UNAVAILABLE -> 503, ...).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import grpc
from aiohttp import WSMsgType, web

from vap_common.logs import get_logger
from vap_common.tasks import cancel_and_wait
from vap_web import auth, metrics
from vap_web.control import ControlClient
from vap_web.live import Viewer, ViewerClosed, Watches
from vap_web.settings import WebSettings

_log = get_logger("vap.web")

STATIC_DIR = Path(str(resources.files("vap_web") / "static"))
CLIENT = web.AppKey("client", ControlClient)
WATCHES = web.AppKey("watches", Watches)
SETTINGS = web.AppKey("settings", WebSettings)
CHECKER = web.AppKey("checker", auth.TokenChecker)
# WebSocket close code of a live view whose token was refused: the page goes to the login form.
CLOSE_TOKEN_REFUSED = 4401

_HTTP_OF_GRPC: dict[grpc.StatusCode, type[web.HTTPException]] = {
    grpc.StatusCode.NOT_FOUND: web.HTTPNotFound,
    grpc.StatusCode.INVALID_ARGUMENT: web.HTTPBadRequest,
    grpc.StatusCode.UNAUTHENTICATED: web.HTTPUnauthorized,
    grpc.StatusCode.PERMISSION_DENIED: web.HTTPForbidden,
    grpc.StatusCode.FAILED_PRECONDITION: web.HTTPConflict,
}
# Scripts, styles, images and sockets from this origin only; no inline code, no framing by other sites.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _json(data: object) -> web.Response:
    return web.json_response(data, dumps=lambda d: json.dumps(d, separators=(",", ":")))


@web.middleware
async def grpc_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except grpc.aio.AioRpcError as exc:
        error = _HTTP_OF_GRPC.get(exc.code(), web.HTTPServiceUnavailable)
        message = exc.details() or exc.code().name
        if error is web.HTTPServiceUnavailable:
            _log.warning("control API call failed", path=request.path, code=exc.code().name)
            message = f"control API unavailable ({exc.code().name})"
        raise error(text=json.dumps({"error": message}), content_type="application/json") from None


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(_SECURITY_HEADERS)
    if request.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"


def _page(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def page(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / name, headers={"Cache-Control": "no-store"})

    return page


def _local_path(target: str) -> str:
    """Where to go after logging in: a path on this site only (no open redirect)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token = str(form.get("token", "")).strip()
    target = _local_path(str(form.get("next", "/")))
    if not auth.same_origin(request):
        raise web.HTTPForbidden(text="cross-site login refused")
    if not token or not await request.app[CHECKER].accepted(token):
        metrics.LOGINS.labels("refused").inc()
        raise web.HTTPSeeOther(f"/login?error=1&next={quote(target)}")
    metrics.LOGINS.labels("ok").inc()
    response = web.HTTPSeeOther(target)
    response.set_cookie(
        auth.TOKEN_COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=request.app[SETTINGS].secure_cookie,
        path="/",
    )
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther("/login")
    response.del_cookie(auth.TOKEN_COOKIE, path="/")
    raise response


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok\n")


async def cameras(request: web.Request) -> web.StreamResponse:
    return _json(await request.app[CLIENT].camera_list(request[auth.TOKEN_KEY]))


async def camera(request: web.Request) -> web.StreamResponse:
    return _json(await request.app[CLIENT].camera_detail(request[auth.TOKEN_KEY], request.match_info["sid"]))


async def counts(request: web.Request) -> web.StreamResponse:
    try:
        minutes = float(request.query.get("minutes", "60"))
    except ValueError:
        minutes = math.nan
    if not 0 < minutes <= 7 * 24 * 60:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "minutes: a number in (0, 10080]"}), content_type="application/json"
        )
    rows, interval = await request.app[CLIENT].counts_and_interval(
        request[auth.TOKEN_KEY], request.match_info["sid"], minutes
    )
    return _json({"counts": rows, "interval_s": interval})


async def live(request: web.Request) -> web.StreamResponse:
    """The live WebSocket of one camera. Incoming messages are ignored; closing it ends the watch."""
    token = request[auth.TOKEN_KEY]
    sid = request.match_info["sid"]
    scenario = await request.app[CLIENT].scenario(token, sid)  # 404/400 before the upgrade
    if not scenario.channel_id:
        raise web.HTTPConflict(text=json.dumps({"error": "the scenario has no channel yet"}))
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096)
    await ws.prepare(request)
    viewer = Viewer(token)
    watches = request.app[WATCHES]
    await watches.join(sid, scenario.channel_id, viewer)

    async def send() -> None:
        async for message in viewer.messages():
            if isinstance(message, ViewerClosed):
                # 4401: the page's cue to log in again (4000-4999 are the application's own close codes).
                await ws.close(code=CLOSE_TOKEN_REFUSED, message=message.reason.encode())
                return
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(message)

    sender = asyncio.ensure_future(send())
    metrics.VIEWERS.inc()
    try:
        async for msg in ws:
            if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                break
    finally:
        await cancel_and_wait(sender)
        await watches.leave(sid, viewer)
        metrics.VIEWERS.dec()
    return ws


def build_app(settings: WebSettings, client: ControlClient, watches: Watches) -> web.Application:
    checker = watches.checker
    app = web.Application(middlewares=[grpc_errors, auth.middleware(checker)], client_max_size=64 * 1024)
    app[CLIENT] = client
    app[WATCHES] = watches
    app[SETTINGS] = settings
    app[CHECKER] = checker
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/", _page("index.html"))
    app.router.add_get("/camera/{sid}", _page("camera.html"))
    app.router.add_get("/login", _page("login.html"))
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/cameras", cameras)
    app.router.add_get("/api/cameras/{sid}", camera)
    app.router.add_get("/api/cameras/{sid}/counts", counts)
    app.router.add_get("/api/cameras/{sid}/live", live)
    app.router.add_static("/static/", STATIC_DIR, show_index=False)
    return app
