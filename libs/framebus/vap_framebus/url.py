"""Server URL lists: ``nats://[user:pass@|token@]host[:port][, ...]`` (``tls://`` for the same with TLS
required; any server that asks for TLS gets it too).

ws:// and wss:// URLs are refused with a clear error: the frame bus speaks the NATS protocol over TCP only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import unquote, urlsplit

from vap_framebus.errors import UnsupportedURLError

DEFAULT_PORT = 4222
_PLAIN_SCHEMES = frozenset({"nats", "tcp"})
_TLS_SCHEMES = frozenset({"tls"})
_UNSUPPORTED_SCHEMES = frozenset({"ws", "wss"})


@dataclass(frozen=True)
class ServerAddress:
    host: str
    port: int
    user: str = ""
    password: str = ""
    token: str = ""
    tls: bool = False  # required by the URL (tls://)

    def __str__(self) -> str:  # never shows credentials
        return f"{'tls' if self.tls else 'nats'}://{self.host}:{self.port}"


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
            f"vap_framebus speaks NATS over TCP (nats://, tls://), not {scheme}:// ({_redact(url)}); "
            "use nats-py for websocket connections"
        )
    if scheme not in _PLAIN_SCHEMES | _TLS_SCHEMES:
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
    tls = scheme in _TLS_SCHEMES
    if user and parts.password is None:
        return ServerAddress(host, port, token=user, tls=tls)  # nats://TOKEN@host
    return ServerAddress(host, port, user=user, password=password, tls=tls)


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest
