"""VAP's NATS connections (nats-py): one way to connect, and the small subscribe/publish bus of the services
whose message rates do not need the lean ``vap_framebus`` client.

Every nats-py connection of a VAP process goes through ``connect_nats``: the same server-list handling
(``NATS_URL`` may name a cluster), reconnecting forever, and disconnects/reconnects logged under the
connection's name (errors at debug: "connection refused" while NATS restarts would otherwise flood the log).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import nats
from nats.aio.client import Client as NatsClient

from vap_common.logs import get_logger
from vap_common.nats_urls import nats_servers
from vap_common.scenario_configs import fetch_latest_scenario_configs

_log = get_logger("vap.bus")

Handler = Callable[[str, bytes], Awaitable[None]]
Callback = Callable[[], Awaitable[None]]
ErrorCallback = Callable[[Exception], Awaitable[None]]


async def connect_nats(
    url: str,
    *,
    name: str,
    connect_timeout: float = 5.0,
    reconnect_time_wait: float = 0.5,
    disconnected_cb: Callback | None = None,
    reconnected_cb: Callback | None = None,
    error_cb: ErrorCallback | None = None,
) -> NatsClient:
    """A connection named ``name`` that reconnects forever. Raises what nats-py raises when the first
    connect fails (callers that must start without NATS retry it, e.g. the control service's bus)."""

    client: NatsClient | None = None

    async def on_disconnected() -> None:
        if client is not None and not (client.is_closed or client.is_draining):  # not our own close
            _log.warning("disconnected from NATS; reconnecting", connection=name)
        if disconnected_cb is not None:
            await disconnected_cb()

    async def on_reconnected() -> None:
        _log.info("reconnected to NATS", connection=name)
        if reconnected_cb is not None:
            await reconnected_cb()

    async def on_error(exc: Exception) -> None:
        _log.debug("NATS client error", connection=name, error=str(exc))
        if error_cb is not None:
            await error_cb(exc)

    client = await nats.connect(
        nats_servers(url),
        name=name,
        connect_timeout=connect_timeout,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=reconnect_time_wait,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        error_cb=on_error,
    )
    return client


class Bus(Protocol):
    """What the tracker and dataset capture need of NATS (tests substitute in-memory fakes)."""

    async def subscribe(self, subject: str, handler: Handler) -> None: ...

    async def publish(self, subject: str, payload: bytes) -> None: ...

    async def flush(self) -> None: ...

    async def close(self) -> None: ...

    async def stored_scenario_configs(self) -> list[tuple[str, bytes]]:
        """(subject, payload) of the latest ScenarioConfig per scenario kept by JetStream; empty if none."""
        ...


class NatsBus:
    """``Bus`` over nats-py: fine at tens of messages per second per channel."""

    def __init__(self, client: Any, *, owned: bool = True) -> None:
        self._nc = client
        self._owned = owned
        self._subs: list[Any] = []
        self._closed = False

    @classmethod
    async def connect(cls, url: str, *, name: str = "vap") -> NatsBus:
        return cls(await connect_nats(url, name=name))

    async def subscribe(self, subject: str, handler: Handler, *, pending_msgs_limit: int = 0) -> None:
        async def callback(msg: Any) -> None:
            await handler(msg.subject, msg.data)

        limits = {"pending_msgs_limit": pending_msgs_limit} if pending_msgs_limit else {}
        self._subs.append(await self._nc.subscribe(subject, cb=callback, **limits))

    async def publish(self, subject: str, payload: bytes) -> None:
        await self._nc.publish(subject, payload)

    async def flush(self) -> None:
        await self._nc.flush(timeout=5)

    async def stored_scenario_configs(self) -> list[tuple[str, bytes]]:
        return await fetch_latest_scenario_configs(self._nc)

    async def close(self) -> None:
        """Unsubscribe and (when the connection is ours) drain it; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()
        if self._owned:
            await self._nc.drain()
