"""All NATS I/O of the tracker in one place, behind a two-method interface, so the transport can later be
swapped for the lean client in libs/framebus without touching the service logic. Payloads are serialised
vap.v1 messages; subjects come from vap_common.subjects."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from vap_common.nats_urls import nats_servers
from vap_common.scenario_configs import fetch_latest_scenario_configs

Handler = Callable[[str, bytes], Awaitable[None]]


class Bus(Protocol):
    async def subscribe(self, subject: str, handler: Handler) -> None: ...

    async def publish(self, subject: str, payload: bytes) -> None: ...

    async def flush(self) -> None: ...

    async def close(self) -> None: ...

    async def stored_scenario_configs(self) -> list[tuple[str, bytes]]:
        """(subject, payload) of the latest ScenarioConfig per scenario kept by JetStream; empty if none."""
        ...


class NatsBus:
    """nats-py: fine at the tracker's rates (<= 25 messages/s per channel in, a few out)."""

    def __init__(self, client: Any, *, owned: bool = True) -> None:
        self._nc = client
        self._owned = owned
        self._subs: list[Any] = []

    @classmethod
    async def connect(cls, url: str, *, name: str = "vap-tracker") -> NatsBus:
        import nats

        return cls(
            await nats.connect(
                nats_servers(url), name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5
            )
        )

    async def subscribe(self, subject: str, handler: Handler) -> None:
        async def callback(msg: Any) -> None:
            await handler(msg.subject, msg.data)

        self._subs.append(await self._nc.subscribe(subject, cb=callback))

    async def publish(self, subject: str, payload: bytes) -> None:
        await self._nc.publish(subject, payload)

    async def flush(self) -> None:
        await self._nc.flush(timeout=5)

    async def stored_scenario_configs(self) -> list[tuple[str, bytes]]:
        return await fetch_latest_scenario_configs(self._nc)

    async def close(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()
        if self._owned:
            await self._nc.drain()
