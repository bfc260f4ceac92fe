"""The outbox relay: delivers outbox rows over NATS and records the outcome.

Loop: claim due rows (``SELECT ... FOR UPDATE SKIP LOCKED`` under a short lease, so several control instances
share the work and a crashed one's rows come back), deliver them concurrently without holding a transaction,
then record each outcome in its own transaction.

- ``scenario_config``: published to JetStream (the config stream keeps the latest per scenario for consumers
  that start later); sent once the server acknowledged it.
- ``start_channel`` / ``stop_channel``: NATS request to ``vap.agent.<agent>.commands``; the agent's
  ``AgentReply`` is applied (``agent_sync.apply_reply``). A start is placed on a live agent with room when
  first delivered; a stop goes wherever the scenario is placed then.

Nothing is lost while NATS is down: rows stay pending and are retried with exponential backoff and jitter; a
command whose reply was lost is resent with the same command id, which agents answer without repeating it.
Inserts wake the relay at once through LISTEN/NOTIFY; a short poll covers retries and missed notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass

import nats.errors
from google.protobuf import timestamp_pb2
from psycopg import AsyncConnection

from vap_common import subjects
from vap_common.logs import get_logger
from vap_common.tasks import cancel_and_wait
from vap_control import agent_sync, metrics, placement, status, streams
from vap_control.bus import NatsConnection
from vap_control.db.pool import Pool
from vap_control.repo import outbox as outbox_repo
from vap_control.repo import scenarios as repo
from vap_control.settings import ControlSettings
from vap_proto.v1 import agent_pb2

_log = get_logger("vap.control.outbox")


@dataclass(slots=True)
class _Delivery:
    row: outbox_repo.OutboxRow
    agent_id: str | None = None
    reply: agent_pb2.AgentReply | None = None
    error: str = ""
    # No agent subscribed to the subject (the agent is down or restarting).
    no_responders: bool = False
    # Nothing to deliver: the outcome was already recorded while preparing (final or rescheduled).
    settled: bool = False
    final: bool = False
    # Whether the attempt counts for backoff (not when we simply had no connection).
    counts: bool = True


class OutboxRelay:
    def __init__(self, pool: Pool, bus: NatsConnection, settings: ControlSettings, dsn: str) -> None:
        self._pool = pool
        self._bus = bus
        self._settings = settings
        self._dsn = dsn
        # Whether configs go through the JetStream config stream; decided once connected (None = not yet).
        self.config_via_js: bool | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Passes skipped because NATS was not connected (rows stay pending; visible for tests and logs).
        self.blocked_passes = 0
        bus.on_connect(self.wake)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="vap-control-outbox-listen"),
            asyncio.create_task(self._loop(), name="vap-control-outbox"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)

    def wake(self) -> None:
        self._wake.set()

    # --- loop -----------------------------------------------------------------------------------------------

    async def _listen(self) -> None:
        """LISTEN for inserts (the outbox trigger notifies); reconnect when the connection breaks."""
        while True:
            try:
                async with await AsyncConnection.connect(self._dsn, autocommit=True) as conn:
                    await outbox_repo.listen(conn)
                    self._wake.set()  # rows inserted while we were not listening
                    async for _ in conn.notifies():
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.warning("outbox LISTEN connection lost; reconnecting", error=str(exc))
                await asyncio.sleep(1.0)

    async def _loop(self) -> None:
        while True:
            try:
                handled = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("outbox relay pass failed")
                handled = 0
            if handled:
                continue  # there may be more (including the next row of the same scenarios)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._settings.outbox_poll_s)
            self._wake.clear()

    async def run_once(self) -> int:
        """One pass: claim, deliver, record. Returns the number of rows whose outcome was final."""
        s = self._settings
        if not self._bus.connected:
            # Nothing can be delivered: leave every row pending (nothing is lost) until the connection is
            # back, which wakes the relay at once.
            if self.blocked_passes % 100 == 0 and self._bus.ever_connected and not self._bus.closing:
                _log.warning("NATS not connected: outbox rows wait in PostgreSQL")
            self.blocked_passes += 1
            return 0
        lease_s = s.command_timeout_s + 10.0
        async with self._pool.connection() as conn:
            async with conn.transaction():
                rows = await outbox_repo.claim(conn, limit=s.outbox_batch, lease_s=lease_s)
            if not rows:
                async with conn.transaction():
                    metrics.OUTBOX_PENDING.set(await outbox_repo.pending_count(conn))
                return 0
            deliveries = [await self._prepare(conn, row) for row in rows]
        await asyncio.gather(*(self._deliver(d) for d in deliveries if not d.settled))
        final = 0
        async with self._pool.connection() as conn:
            for delivery in deliveries:
                if delivery.settled:
                    final += int(delivery.final)
                    continue
                async with conn.transaction():
                    final += await self._record(conn, delivery)
        return final

    # --- prepare: choose the target (database only) ---------------------------------------------------------

    async def _prepare(self, conn: repo.Conn, row: outbox_repo.OutboxRow) -> _Delivery:
        delivery = _Delivery(row)
        if row.kind == outbox_repo.CONFIG:
            return delivery
        async with conn.transaction():
            scenario = await repo.get(conn, row.scenario_id, lock=True)
            if row.kind == outbox_repo.START:
                if scenario is None or not status.start_deliverable(scenario.status_value):
                    await outbox_repo.mark_cancelled(conn, row.id, "scenario no longer starting")
                    delivery.settled = delivery.final = True
                    return delivery
                agent = row.agent_id
                if agent is None:
                    agent = await placement.pick(conn, scenario, self._settings)
                    if agent is None:
                        await repo.apply_change(
                            conn, scenario, status.waiting_for_agent(scenario.status_reason)
                        )
                        await outbox_repo.retry_later(
                            conn,
                            row.id,
                            delay_s=self._backoff(row.attempts),
                            error="no live decoder agent with a free slot",
                            agent_id=None,
                        )
                        delivery.settled = True  # rescheduled: nothing to send now
                        return delivery
                    await repo.apply_change(conn, scenario, status.agent_found())
                    await outbox_repo.set_agent(conn, row.id, agent)
                if scenario.agent_id != agent:
                    await repo.assign_worker(conn, scenario, agent)
                delivery.agent_id = agent
            else:  # stop: wherever the scenario is placed now, else where it was when the stop was asked
                agent = scenario.agent_id if scenario is not None and scenario.agent_id else row.agent_id
                if agent is None:
                    if scenario is not None:
                        await repo.apply_change(conn, scenario, status.stop_unplaced(scenario.status_value))
                    await outbox_repo.mark_sent(conn, row.id)
                    delivery.settled = delivery.final = True
                    return delivery
                delivery.agent_id = agent
        return delivery

    # --- deliver: NATS only ---------------------------------------------------------------------------------

    async def _deliver(self, d: _Delivery) -> None:
        if not self._bus.connected:
            d.error, d.counts = "not connected to NATS", False
            return
        try:
            if d.row.kind == outbox_repo.CONFIG:
                await self._publish_config(d.row)
                return
            assert d.agent_id is not None
            command = agent_pb2.AgentCommand.FromString(d.row.payload)
            command.command_id = str(d.row.command_id)
            command.agent_id = d.agent_id
            command.create_time.CopyFrom(_timestamp(d.row))
            msg = await self._bus.nc.request(
                subjects.agent_commands(d.agent_id),
                command.SerializeToString(),
                timeout=self._settings.command_timeout_s,
            )
            d.reply = agent_pb2.AgentReply.FromString(msg.data)
        except nats.errors.NoRespondersError:
            d.no_responders, d.error = True, f"no decoder agent {d.agent_id} listening"
        except (TimeoutError, nats.errors.TimeoutError):
            d.error = f"no reply from decoder agent {d.agent_id} within {self._settings.command_timeout_s} s"
        except Exception as exc:
            d.error = f"{type(exc).__name__}: {exc}"

    async def _publish_config(self, row: outbox_repo.OutboxRow) -> None:
        subject = subjects.scenario_config(str(row.scenario_id))
        if self.config_via_js is None:
            config = streams.config_stream_config(self._settings)
            self.config_via_js = await streams.ensure_stream(self._bus.js, config)
        if self.config_via_js:
            await self._bus.js.publish(subject, row.payload, timeout=self._settings.command_timeout_s)
        else:
            await self._bus.nc.publish(subject, row.payload)
            await self._bus.nc.flush(timeout=max(1, round(self._settings.command_timeout_s)))

    # --- record: one transaction per row ------------------------------------------------------------------

    async def _record(self, conn: repo.Conn, d: _Delivery) -> int:
        row = d.row
        if row.kind == outbox_repo.CONFIG:
            if d.error:
                return await self._retry(conn, d, keep_agent=None)
            await outbox_repo.mark_sent(conn, row.id)
            metrics.OUTBOX_DELIVERIES.labels(row.kind, "sent").inc()
            return 1
        # Lock order as everywhere: the scenario, then its outbox row.
        scenario = await repo.get(conn, row.scenario_id, lock=True)
        if d.reply is not None:
            outcome = await agent_sync.apply_reply(conn, row, d.reply, self._settings)
            if outcome.done:
                await outbox_repo.mark_sent(conn, row.id, reply_code=d.reply.code)
                metrics.OUTBOX_DELIVERIES.labels(row.kind, "sent").inc()
                return 1
            metrics.OUTBOX_DELIVERIES.labels(row.kind, "replaced").inc()
            await outbox_repo.retry_later(
                conn, row.id, delay_s=outcome.retry_delay_s, error=outcome.error, agent_id=outcome.retry_agent
            )
            return 0
        if d.no_responders:
            alive = d.agent_id is not None and await repo.agent_alive(
                conn, d.agent_id, agent_timeout_s=self._settings.agent_timeout_s
            )
            if row.kind == outbox_repo.STOP and not alive:
                # Nobody runs that agent any more: its decoders died with it.
                if scenario is not None:
                    change = status.stop_agent_gone(scenario.status_value, agent=d.agent_id)
                    await repo.apply_change(conn, scenario, change)
                await outbox_repo.mark_sent(conn, row.id)
                metrics.OUTBOX_DELIVERIES.labels(row.kind, "agent_gone").inc()
                return 1
            if row.kind == outbox_repo.START:
                # Place it afresh next time (another agent may be alive); the worker row goes with it.
                await repo.release_worker(conn, row.scenario_id)
                return await self._retry(conn, d, keep_agent=None)
        return await self._retry(conn, d, keep_agent=d.agent_id)

    async def _retry(self, conn: repo.Conn, d: _Delivery, *, keep_agent: str | None) -> int:
        delay = self._backoff(d.row.attempts)
        await outbox_repo.retry_later(
            conn, d.row.id, delay_s=delay, error=d.error, agent_id=keep_agent, count_attempt=d.counts
        )
        metrics.OUTBOX_DELIVERIES.labels(d.row.kind, "retry").inc()
        if d.counts and (d.row.attempts in (0, 5) or d.row.attempts % 50 == 0):  # not one line per retry
            _log.warning(
                "outbox delivery failed; will retry",
                kind=d.row.kind,
                error=d.error,
                retry_in_s=round(delay, 2),
            )
        return 0

    def _backoff(self, attempts: int) -> float:
        s = self._settings
        base = min(s.retry_max_s, s.retry_initial_s * (2 ** min(attempts, 16)))
        return float(base * random.uniform(0.8, 1.2))  # noqa: S311  (jitter, not cryptography)


def _timestamp(row: outbox_repo.OutboxRow) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(row.create_time)
    return ts
