"""NATS server lists: ``NATS_URL`` may name several servers of a cluster, comma-separated
(``nats://a:4222,nats://b:4222``), as the nats CLI and ``vap_framebus`` accept it. nats-py wants a list."""

from __future__ import annotations


def nats_servers(url: str) -> list[str]:
    """The servers of ``url`` in order; ValueError when it names none."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError(f"no NATS server in {url!r}")
    return servers
