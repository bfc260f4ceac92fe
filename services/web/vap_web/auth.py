"""Who may use the pages: the holders of a token the control API accepts, and nobody else.

A browser logs in once by posting the token (kept in an HttpOnly, SameSite=Strict cookie; EventSource and
WebSocket cannot send headers); scripts may send ``Authorization: Bearer <token>`` instead. The gateway has
no token list of its own: it asks the control API whether the token is good (cached for
``token_cache_s``) and makes every API call with that same token, so rotating or revoking tokens on the
control service applies here too.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from vap_web.control import ControlClient

TOKEN_COOKIE = "vap_token"  # noqa: S105 - the cookie's name, not a secret
# Paths served without a token: logging in and out, static files (no data in them) and liveness.
PUBLIC_PATHS = ("/login", "/logout", "/healthz")
PUBLIC_PREFIXES = ("/static/",)
TOKEN_KEY = web.RequestKey("token", str)
_MAX_CACHED = 1024


def request_token(request: web.Request) -> str | None:
    """The bearer token of the Authorization header, else the login cookie; None when neither is set."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    cookie = request.cookies.get(TOKEN_COOKIE, "").strip()
    return cookie or None


def same_origin(request: web.Request) -> bool:
    """False when the browser says the request comes from another site's page (cross-site WebSocket or form
    posts); requests without an Origin header (scripts, curl) are judged by their token alone."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.host


class TokenChecker:
    """Asks the control API whether a token is accepted; remembers accepted ones (by hash) for a while."""

    def __init__(self, client: ControlClient, ttl_s: float) -> None:
        self._client = client
        self._ttl = ttl_s
        self._accepted: dict[bytes, float] = {}

    async def accepted(self, token: str) -> bool:
        key = hashlib.sha256(token.encode()).digest()
        now = time.monotonic()
        if self._accepted.get(key, 0.0) > now:
            return True
        if not await self._client.token_accepted(token):
            self._accepted.pop(key, None)
            return False
        if len(self._accepted) >= _MAX_CACHED:
            self._accepted = {k: t for k, t in self._accepted.items() if t > now}
        self._accepted[key] = now + self._ttl
        return True

    def forget(self, token: str) -> None:
        """Ask the control API again on this token's next use (a stream just refused it)."""
        self._accepted.pop(hashlib.sha256(token.encode()).digest(), None)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def middleware(checker: TokenChecker) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def authenticate(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if is_public(request.path):
            return await handler(request)
        token = request_token(request)
        if token is not None and same_origin(request) and await checker.accepted(token):
            request[TOKEN_KEY] = token
            return await handler(request)
        if request.path.startswith("/api/"):
            raise web.HTTPUnauthorized(
                text='{"error": "missing or invalid token (log in, or send Authorization: Bearer <token>)"}',
                content_type="application/json",
                headers={"WWW-Authenticate": "Bearer"},
            )
        raise web.HTTPFound(f"/login?next={request.path}")

    return authenticate
