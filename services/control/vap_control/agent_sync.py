"""What the decoder agents tell us, applied to scenarios and the workers table.

Three bus inputs (core NATS; every control instance handles every message, and each effect is an idempotent
transaction under the scenario's row lock):

- ``AgentReply`` (``vap.agent.*.replies``): the answer to an outbox command. The relay applies the reply it
  waited for itself; this consumer applies replies that arrived after the relay gave up waiting.
- ``ChannelHealth`` (``vap.health.*``): stored on the scenario (throttled), and it proves process state:
  a decoder process reporting with a pid makes a starting scenario ACTIVE, FAILED health fails the scenario,
  STOPPED completes a stop.
- ``AgentStatus`` (``vap.agent.*.status``): the agents table (placement, liveness), worker pids, and stops
  or starts the agent no longer knows about.

A periodic reconcile moves the scenarios of agents that stopped reporting (only after we have been connected
to NATS long enough to have heard them) and of drained nodes to other nodes (``placement``).

How replies move scenarios (walks only go forward along their chain, so a stale reply changes nothing):

    start OK            -> IN_STARTUP_PROCESSING, and ACTIVE at once when the reply carries a pid
    start MAX_WORKERS   -> placed on another live agent with room, else FAILED ("no decoder capacity")
    start UNAVAILABLE   -> placed again (the agent is shutting down)
    start other codes   -> FAILED with the agent's message
    stop OK / NOT_FOUND -> IN_SHUTDOWN_PROCESSING, and INACTIVE once no process is left
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from vap_common import subjects
from vap_common.logs import get_logger
from vap_common.redact import redact_text
from vap_control import lifecycle, metrics, placement
from vap_control.bus import Bus
from vap_control.db.pool import Pool
from vap_control.repo import nodes as nodes_repo
from vap_control.repo import outbox as outbox_repo
from vap_control.repo import scenarios as repo
from vap_control.repo.scenarios import Conn, ScenarioRow
from vap_control.settings import ControlSettings
from vap_control.tasks import cancel_and_wait
from vap_proto.v1 import agent_pb2, health_pb2

_log = get_logger("vap.control.agents")

Code = agent_pb2.AgentReplyCode
CS = health_pb2.ChannelState


@dataclass(slots=True)
class ReplyOutcome:
    """What the relay does with the outbox row after a reply was applied."""

    done: bool
    # For a start to place again: the agent to try next (None = let the relay choose after a delay).
    retry_agent: str | None = None
    retry_delay_s: float = 0.0
    error: str = ""


def _code_name(code: int) -> str:
    if code not in Code.values():
        return str(code)
    return Code.Name(agent_pb2.AgentReplyCode.ValueType(code)).removeprefix("AGENT_REPLY_CODE_")


def _process_gone(channel: agent_pb2.ChannelProcess) -> bool:
    return (
        channel.pid == 0 or channel.HasField("exit_code") or channel.health.state == CS.CHANNEL_STATE_STOPPED
    )


async def apply_reply(
    conn: Conn, row: outbox_repo.OutboxRow, reply: agent_pb2.AgentReply, settings: ControlSettings
) -> ReplyOutcome:
    """Apply an agent's reply to the outbox row it answers (caller holds a transaction)."""
    metrics.AGENT_REPLIES.labels(_code_name(reply.code)).inc()
    scenario = await repo.get(conn, row.scenario_id, lock=True)
    if scenario is None:  # deleted meanwhile: nothing left to move
        return ReplyOutcome(done=True)
    agent = reply.agent_id or row.agent_id or ""
    message = redact_text(reply.message)
    if row.kind == outbox_repo.START:
        return await _apply_start_reply(conn, scenario, reply, agent, message, settings)
    if row.kind == outbox_repo.STOP:
        return await _apply_stop_reply(conn, scenario, reply, agent, message)
    return ReplyOutcome(done=True)


async def _apply_start_reply(
    conn: Conn,
    scenario: ScenarioRow,
    reply: agent_pb2.AgentReply,
    agent: str,
    message: str,
    settings: ControlSettings,
) -> ReplyOutcome:
    if reply.code == Code.AGENT_REPLY_CODE_OK:
        channel = reply.channel
        start_time = channel.start_time.ToDatetime(UTC) if channel.HasField("start_time") else None
        # Recorded even when a stop came meanwhile: the process exists and the stop must find it.
        await repo.update_worker(
            conn, scenario.id, agent_id=agent, pid=channel.pid, ring=channel.ring, start_time=start_time
        )
        if channel.HasField("health"):
            await repo.set_health(conn, scenario.id, channel.health)
        await repo.advance(conn, scenario, lifecycle.IN_STARTUP_PROCESSING, lifecycle.STARTUP_CHAIN)
        if channel.pid > 0 and not _process_gone(channel):
            await repo.advance(conn, scenario, lifecycle.ACTIVE, lifecycle.STARTUP_CHAIN)
        return ReplyOutcome(done=True)
    if reply.code in (Code.AGENT_REPLY_CODE_MAX_WORKERS, Code.AGENT_REPLY_CODE_UNAVAILABLE):
        if scenario.status_value == lifecycle.INIT_STARTUP:
            other = await placement.pick(conn, scenario, settings, exclude=[agent])
            if other is not None:
                await repo.assign_worker(conn, scenario, other)
                return ReplyOutcome(done=False, retry_agent=other, error=f"{agent}: {_code_name(reply.code)}")
        await repo.release_worker(conn, scenario.id)
        if (
            reply.code == Code.AGENT_REPLY_CODE_UNAVAILABLE
            and scenario.status_value == lifecycle.INIT_STARTUP
        ):
            # The only agent is shutting down; another (or it, restarted) will take the command later.
            await repo.set_reason(conn, scenario.id, f"decoder agent {agent} is shutting down; waiting")
            return ReplyOutcome(done=False, retry_delay_s=settings.retry_max_s, error="agent unavailable")
        await repo.fail(conn, scenario, f"no decoder capacity: agent {agent} reached MAX_WORKERS")
        return ReplyOutcome(done=True)
    if reply.code != Code.AGENT_REPLY_CODE_ALREADY_EXISTS:
        await repo.release_worker(conn, scenario.id)
    # Keep the workers row for ALREADY_EXISTS: that process is left to release with a stop.
    await repo.fail(
        conn, scenario, f"decoder agent {agent} refused the start: {_code_name(reply.code)}: {message}"
    )
    return ReplyOutcome(done=True)


async def _apply_stop_reply(
    conn: Conn, scenario: ScenarioRow, reply: agent_pb2.AgentReply, agent: str, message: str
) -> ReplyOutcome:
    if reply.code in (
        Code.AGENT_REPLY_CODE_OK,
        Code.AGENT_REPLY_CODE_NOT_FOUND,
        Code.AGENT_REPLY_CODE_UNAVAILABLE,
    ):
        gone = (
            reply.code != Code.AGENT_REPLY_CODE_OK
            or not reply.HasField("channel")
            or _process_gone(reply.channel)
        )
        if reply.HasField("channel") and reply.channel.HasField("health"):
            await repo.set_health(conn, scenario.id, reply.channel.health)
        await repo.advance(conn, scenario, lifecycle.IN_SHUTDOWN_PROCESSING, lifecycle.SHUTDOWN_CHAIN)
        if gone and scenario.status_value == lifecycle.INIT_STARTUP and scenario.agent_id == agent:
            # The stop ahead of a restart or a move (drained node): that placement is over, the start that
            # follows places the scenario afresh.
            await repo.release_worker(conn, scenario.id)
        elif gone:
            await finish_stop(conn, scenario)
        return ReplyOutcome(done=True)
    await repo.fail(
        conn,
        scenario,
        f"decoder agent {agent} could not stop the channel: {_code_name(reply.code)}: {message}",
    )
    return ReplyOutcome(done=True)


async def finish_stop(conn: Conn, scenario: ScenarioRow, reason: str = "") -> None:
    """The scenario's process is gone: INACTIVE (from IN_SHUTDOWN_PROCESSING) and no worker any more."""
    if await repo.advance(conn, scenario, lifecycle.INACTIVE, lifecycle.SHUTDOWN_CHAIN, reason):
        await repo.release_worker(conn, scenario.id)


async def complete_stop_locally(conn: Conn, scenario_id: uuid.UUID, reason: str) -> None:
    """A stop with no process to stop (never placed, or its agent is gone): walk the shutdown chain."""
    scenario = await repo.get(conn, scenario_id, lock=True)
    if scenario is None:
        return
    await repo.advance(conn, scenario, lifecycle.INACTIVE, lifecycle.SHUTDOWN_CHAIN, reason)
    await repo.release_worker(conn, scenario.id)


async def apply_health(conn: Conn, health: health_pb2.ChannelHealth, *, persist: bool) -> None:
    scenario = await repo.get_by_channel(conn, health.channel_id, lock=True)
    if scenario is None:
        return
    status = scenario.status_value
    state = health.state
    if scenario.agent_id is not None and health.agent_id and health.agent_id != scenario.agent_id:
        return  # a report of a previous placement on another agent (e.g. a node it moved away from)
    if persist:
        await repo.set_health(conn, scenario.id, health)
    if scenario.agent_id is not None and health.pid:
        await repo.update_worker(conn, scenario.id, agent_id=scenario.agent_id, pid=health.pid)
    if state == CS.CHANNEL_STATE_FAILED and status in lifecycle.RUNNING and status != lifecycle.INIT_STARTUP:
        await repo.fail(conn, scenario, f"source failed: {redact_text(health.reason)}")
    elif state == CS.CHANNEL_STATE_STOPPED and status == lifecycle.IN_SHUTDOWN_PROCESSING:
        await finish_stop(conn, scenario)
    elif (
        health.pid > 0
        and state not in (CS.CHANNEL_STATE_STOPPED, CS.CHANNEL_STATE_FAILED)
        and status == lifecycle.IN_STARTUP_PROCESSING
    ):
        await repo.advance(conn, scenario, lifecycle.ACTIVE, lifecycle.STARTUP_CHAIN)


async def apply_status(
    conn: Conn,
    status: agent_pb2.AgentStatus,
    *,
    agent_timeout_s: float,
    settings: ControlSettings | None = None,
) -> tuple[bool, list[str]]:
    """Record an agent's heartbeat and reconcile the scenarios placed on it. Returns whether the agent
    (re)appeared (starts waiting for an agent are then made due at once) and the channels it runs that are
    placed on another agent now (moved away while it was silent: they must be stopped there)."""
    appeared = not await repo.agent_alive(conn, status.agent_id, agent_timeout_s=agent_timeout_s)
    if appeared:
        await outbox_repo.make_waiting_starts_due(conn)
    await nodes_repo.record_agent(conn, status)
    listed = {ch.channel_id: ch for ch in status.channels}
    # Scenarios placed on this agent long enough that a heartbeat must list them.
    placed = await nodes_repo.scenarios_on_agent(
        conn,
        status.agent_id,
        statuses=[
            int(lifecycle.IN_STARTUP_PROCESSING),
            int(lifecycle.ACTIVE),
            int(lifecycle.IN_SHUTDOWN_PROCESSING),
        ],
    )
    for scenario_id in placed:
        scenario = await repo.get(conn, scenario_id, lock=True)
        if scenario is None or scenario.agent_id != status.agent_id:
            continue
        channel = listed.get(scenario.channel_id)
        if channel is not None and channel.pid:
            await repo.update_worker(
                conn, scenario.id, agent_id=status.agent_id, pid=channel.pid, ring=channel.ring
            )
        if scenario.status_value == lifecycle.IN_SHUTDOWN_PROCESSING:
            if channel is None or _process_gone(channel):
                await finish_stop(conn, scenario)
        elif channel is not None:
            if (
                scenario.status_value == lifecycle.IN_STARTUP_PROCESSING
                and channel.pid > 0
                and not _process_gone(channel)
            ):
                await repo.advance(conn, scenario, lifecycle.ACTIVE, lifecycle.STARTUP_CHAIN)
        elif await _assigned_before(conn, scenario.id, agent_timeout_s, status):
            # The agent no longer knows the channel (e.g. it was restarted): the decoder is gone.
            reason = f"decoder agent {status.agent_id} no longer runs the channel"
            if settings is not None and settings.failover:
                # Started again, like a scenario of a dead node: an agent restart must not lose it.
                await placement.move(conn, scenario.id, settings, reason=reason, stop_old=False)
            else:
                await repo.fail(conn, scenario, reason)
    return appeared, await _placed_elsewhere(conn, status)


async def _placed_elsewhere(conn: Conn, status: agent_pb2.AgentStatus) -> list[str]:
    running = [ch.channel_id for ch in status.channels if ch.channel_id and not _process_gone(ch)]
    if not running:
        return []
    return await nodes_repo.channels_placed_elsewhere(conn, running, agent_id=status.agent_id)


async def _assigned_before(
    conn: Conn, scenario_id: uuid.UUID, seconds: float, status: agent_pb2.AgentStatus
) -> bool:
    # A heartbeat assembled just before the agent took the channel must not count as "lost it", even when we
    # handle it late (a busy control plane): the report must also be made well after the placement.
    made = status.report_time.ToDatetime(UTC) if status.HasField("report_time") else None
    return await repo.placed_before(
        conn, scenario_id, seconds=seconds, reported=made, margin_s=min(seconds, 1.0)
    )


async def reconcile_dead_agents(conn: Conn, settings: ControlSettings) -> int:
    """Scenarios on agents silent for longer than the timeout: stopping ones INACTIVE; running ones move to
    another node (``placement``), and so do those of drained nodes."""
    stopping = await nodes_repo.scenarios_of_silent_agents(
        conn, agent_timeout_s=settings.agent_timeout_s, statuses=[int(lifecycle.IN_SHUTDOWN_PROCESSING)]
    )
    changed = 0
    for scenario_id, agent_id in stopping:
        scenario = await repo.get(conn, scenario_id, lock=True)
        if scenario is not None and scenario.status_value == lifecycle.IN_SHUTDOWN_PROCESSING:
            await finish_stop(conn, scenario, f"decoder agent {agent_id} stopped reporting")
            changed += 1
    return changed + await placement.reconcile(conn, settings)


class AgentSync:
    """Subscribes to agent replies, channel health and agent heartbeats; runs the periodic reconcile."""

    def __init__(
        self,
        pool: Pool,
        bus: Bus,
        settings: ControlSettings,
        *,
        on_agent_appeared: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._bus = bus
        self._settings = settings
        self._on_agent_appeared = on_agent_appeared
        self._subs: list[Subscription] = []
        # channel -> (state, pid, monotonic time of the last write): health is written on change, else
        # at most every health_persist_s.
        self._health_seen: dict[str, tuple[int, int, float]] = {}
        self._task: asyncio.Task[None] | None = None
        # Latest health per channel (ListChannels shows it without a database read).
        self.latest_health: dict[str, health_pb2.ChannelHealth] = {}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="vap-control-agent-sync")

    def wake_relay(self) -> None:
        """New outbox rows were written outside the API's scenario calls (a drain): deliver them now."""
        if self._on_agent_appeared is not None:
            self._on_agent_appeared()

    async def _run(self) -> None:
        nc = await self._bus.wait_connected()
        self._subs = [
            await nc.subscribe(subjects.all_agent_replies(), cb=self._on_reply),
            await nc.subscribe(subjects.all_channel_health(), cb=self._on_health),
            await nc.subscribe(subjects.all_agent_status(), cb=self._on_status),
        ]
        while True:
            await asyncio.sleep(self._settings.reconcile_s)
            if self._bus.connected_for() < self._settings.agent_timeout_s:
                continue  # we may simply not have heard the heartbeats
            try:
                async with self._pool.connection() as conn, conn.transaction():
                    changed = await reconcile_dead_agents(conn, self._settings)
                if changed:
                    _log.warning("scenarios of silent agents or drained nodes moved", scenarios=changed)
                    self.wake_relay()
            except Exception:
                _log.exception("agent reconcile failed")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_reply(self, msg: Msg) -> None:
        try:
            reply = agent_pb2.AgentReply.FromString(msg.data)
            command_id = uuid.UUID(reply.command_id)
        except (ValueError, TypeError):
            return  # not one of ours (command ids are UUIDs) or garbage
        try:
            async with self._pool.connection() as conn, conn.transaction():
                row = await outbox_repo.find_by_command(conn, command_id)
                if row is None:
                    return
                # Lock order: scenario first, then the outbox row (as everywhere).
                await repo.get(conn, row.scenario_id, lock=True)
                row = await outbox_repo.find_by_command(conn, command_id, lock=True)
                if row is None or row.state != "pending" or row.leased:
                    return  # handled already, or the relay is handling it right now
                if row.agent_id is not None and reply.agent_id and reply.agent_id != row.agent_id:
                    return  # a reply from an agent the command was since moved away from
                outcome = await apply_reply(conn, row, reply, self._settings)
                if outcome.done:
                    await outbox_repo.mark_sent(conn, row.id, reply_code=reply.code)
                else:
                    await outbox_repo.retry_later(
                        conn,
                        row.id,
                        delay_s=outcome.retry_delay_s,
                        error=outcome.error,
                        agent_id=outcome.retry_agent,
                    )
        except Exception:
            _log.exception("applying an agent reply failed", command_id=reply.command_id)

    async def _on_health(self, msg: Msg) -> None:
        try:
            health = health_pb2.ChannelHealth.FromString(msg.data)
        except Exception:
            return
        if not health.channel_id:
            return
        self.latest_health[health.channel_id] = health
        now = time.monotonic()
        seen = self._health_seen.get(health.channel_id)
        changed = seen is None or seen[0] != health.state or seen[1] != health.pid
        if not changed and seen is not None and now - seen[2] < self._settings.health_persist_s:
            return
        self._health_seen[health.channel_id] = (health.state, health.pid, now)
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await apply_health(conn, health, persist=True)
        except Exception:
            _log.exception("applying channel health failed", channel=health.channel_id)

    async def _fence(self, agent_id: str, channel_id: str) -> None:
        """Stop a channel an agent still runs although the scenario moved to another agent (the agent was
        cut off longer than the timeout, then came back): sent directly, repeated at every heartbeat until
        the agent no longer lists the channel."""
        _log.warning("stopping a channel that moved to another node", agent=agent_id, channel=channel_id)
        command = agent_pb2.AgentCommand(
            command_id=str(uuid.uuid4()),
            agent_id=agent_id,
            stop_channel=agent_pb2.StopChannel(channel_id=channel_id),
        )
        command.create_time.GetCurrentTime()
        with contextlib.suppress(Exception):
            await self._bus.nc.publish(subjects.agent_commands(agent_id), command.SerializeToString())

    async def _on_status(self, msg: Msg) -> None:
        try:
            status = agent_pb2.AgentStatus.FromString(msg.data)
        except Exception:
            return
        if not status.agent_id:
            return
        for channel in status.channels:
            if channel.HasField("health") and channel.channel_id:
                known = self.latest_health.get(channel.channel_id)
                if known is None or known.report_time_ns <= channel.health.report_time_ns:
                    self.latest_health[channel.channel_id] = channel.health
        try:
            async with self._pool.connection() as conn, conn.transaction():
                appeared, elsewhere = await apply_status(
                    conn, status, agent_timeout_s=self._settings.agent_timeout_s, settings=self._settings
                )
            for channel_id in elsewhere:
                await self._fence(status.agent_id, channel_id)
            if appeared:
                _log.info("decoder agent available", agent=status.agent_id, max_workers=status.max_workers)
                if self._on_agent_appeared is not None:
                    self._on_agent_appeared()
        except Exception:
            _log.exception("applying an agent heartbeat failed", agent=status.agent_id)
