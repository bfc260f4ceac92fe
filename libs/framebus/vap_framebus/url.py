"""Server URL lists: ``nats://[user:pass@|token@]host[:port][, ...]``.

Only plain TCP is supported: the frame bus runs between processes of one host or one trusted network
segment. tls://, ws:// and wss:// URLs are refused with a clear error rather than silently connecting in
clear text.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import unquote, urlsplit

from vap_framebus.errors import UnsupportedURLError

DEFAULT_PORT = 4222
_PLAIN_SCHEMES = frozenset({"nats", "tcp"})
_UNSUPPORTED_SCHEMES = frozenset({"tls", "ws", "wss"})


@dataclass(frozen=True)
class ServerAddress:
    host: str
    port: int
    user: str = ""
    password: str = ""
    token: str = ""

    def __str__(self) -> str:  # never shows credentials
        return f"nats://{self.host}:{self.port}"


def parse_servers(urls: str, *, user: str = "", password: str = "") -> list[ServerAddress]:
    """Parse one URL or several comma-separated ones, in the order given (they are tried in that order).
    A ``user`` replaces the credentials of every URL (the user info of a URL is used only without one)."""
    servers = [parse_server(part.strip()) for part in urls.split(",") if part.strip()]
    if not servers:
        raise UnsupportedURLError("no NATS server URL given")
    if user:
        servers = [replace(s, user=user, password=password, token="") for s in servers]
    return servers


def parse_server(url: str) -> ServerAddress:
    if "://" not in url:
        url = "nats://" + url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in _UNSUPPORTED_SCHEMES:
        raise UnsupportedURLError(
            f"vap_framebus supports plain nats:// only, not {scheme}:// ({_redact(url)}); "
            "use nats-py for TLS or websocket connections"
        )
    if scheme not in _PLAIN_SCHEMES:
        raise UnsupportedURLError(f"unsupported URL scheme {scheme!r} in {_redact(url)}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise UnsupportedURLError(f"bad port in {_redact(url)}") from exc
    host = parts.hostname
    if not host:
        raise UnsupportedURLError(f"no host in {_redact(url)}")
    user = unquote(parts.username or "")
    password = unquote(parts.password or "")
    if user and parts.password is None:
        return ServerAddress(host, port, token=user)  # nats://TOKEN@host
    return ServerAddress(host, port, user=user, password=password)


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest
