"""The control service's NATS connection, ``NatsConnection`` (the connecting is vap_common.bus.connect_nats).

The service must start and answer API calls while NATS is down (the outbox keeps commands until it is back),
so the first connect is retried in the background and the connection reconnects forever. Components wait for
``wait_connected`` and check ``connected`` before sending. ``connected_for`` lets the agent reconciler tell
"the agent stopped reporting" from "we could not hear anybody".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from vap_common.bus import connect_nats
from vap_common.logs import get_logger
from vap_common.nats_auth import NatsAuth, NatsAuthError
from vap_common.tasks import cancel_and_wait

_log = get_logger("vap.control.bus")


class NatsConnection:
    def __init__(self, url: str, *, name: str = "vap-control", auth: NatsAuth | None = None) -> None:
        self.url = url
        self.name = name
        self.auth = auth
        self._nc: NatsClient | None = None
        self._connected = asyncio.Event()
        self._connected_since: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Called (synchronously) whenever the connection is (re)established, e.g. to wake the outbox relay.
        self._on_connect: list[Callable[[], None]] = []

    def on_connect(self, callback: Callable[[], None]) -> None:
        self._on_connect.append(callback)

    def _notify_connected(self) -> None:
        for callback in self._on_connect:
            callback()

    @property
    def nc(self) -> NatsClient:
        if self._nc is None:
            raise RuntimeError("NATS is not connected yet")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream()

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def ever_connected(self) -> bool:
        return self._connected.is_set()

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def connected_for(self) -> float:
        """Seconds since the connection was last (re)established; 0 while disconnected."""
        if not self.connected or self._connected_since is None:
            return 0.0
        return time.monotonic() - self._connected_since

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect_loop(), name="vap-control-nats-connect")

    async def wait_connected(self) -> NatsClient:
        await self._connected.wait()
        return self.nc

    async def _connect_loop(self) -> None:
        delay = 0.2
        while not self._closing:
            try:
                self._nc = await connect_nats(
                    self.url,
                    name=self.name,
                    auth=self.auth,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
            except NatsAuthError as exc:
                # The API keeps serving (the outbox keeps commands); the credentials may be fixed server-side.
                _log.error("NATS refused the credentials; retrying", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except Exception as exc:
                _log.warning("cannot connect to NATS yet; retrying", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._connected_since = time.monotonic()
            self._connected.set()
            _log.info("connected to NATS")
            self._notify_connected()
            return

    async def _on_disconnected(self) -> None:
        self._connected_since = None

    async def _on_reconnected(self) -> None:
        self._connected_since = time.monotonic()
        self._notify_connected()

    async def close(self) -> None:
        self._closing = True
        await cancel_and_wait(self._task)
        if self._nc is not None and not self._nc.is_closed:
            if self._nc.is_connected:
                # Drain delivers what subscriptions already received (e.g. an inbox batch being acked).
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._nc.drain(), timeout=5.0)
            with contextlib.suppress(Exception):
                await self._nc.close()
