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

What each input does to a scenario's status is decided by ``status`` (start/stop replies, health, heartbeats,
silent agents); this module gathers the facts, keeps the workers table and the agents table, and applies the
decisions.
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
from vap_common.tasks import cancel_and_wait
from vap_control import lifecycle, metrics, placement, status
from vap_control.bus import NatsConnection
from vap_control.db.pool import Pool
from vap_control.repo import nodes as nodes_repo
from vap_control.repo import outbox as outbox_repo
from vap_control.repo import scenarios as repo
from vap_control.repo.scenarios import Conn, ScenarioRow
from vap_control.settings import ControlSettings
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


def _process_gone(channel: agent_pb2.ChannelProcess) -> bool:
    return (
        channel.pid == 0 or channel.HasField("exit_code") or channel.health.state == CS.CHANNEL_STATE_STOPPED
    )


async def apply_reply(
    conn: Conn, row: outbox_repo.OutboxRow, reply: agent_pb2.AgentReply, settings: ControlSettings
) -> ReplyOutcome:
    """Apply an agent's reply to the outbox row it answers (caller holds a transaction)."""
    metrics.AGENT_REPLIES.labels(status.code_name(reply.code)).inc()
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
        change = status.start_accepted(scenario.status_value, running=not _process_gone(channel))
        await repo.apply_change(conn, scenario, change)
        return ReplyOutcome(done=True)
    refusal = status.start_refused(scenario.status_value, code=reply.code, agent=agent, message=message)
    if refusal.place_elsewhere:
        other = await placement.pick(conn, scenario, settings, exclude=[agent])
        if other is not None:
            await repo.assign_worker(conn, scenario, other)
            return ReplyOutcome(
                done=False, retry_agent=other, error=f"{agent}: {status.code_name(reply.code)}"
            )
    await repo.apply_change(conn, scenario, refusal.change)
    if refusal.retry:
        return ReplyOutcome(done=False, retry_delay_s=settings.retry_max_s, error="agent unavailable")
    return ReplyOutcome(done=True)


async def _apply_stop_reply(
    conn: Conn, scenario: ScenarioRow, reply: agent_pb2.AgentReply, agent: str, message: str
) -> ReplyOutcome:
    current = scenario.status_value
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
        change = status.stop_accepted(current, process_gone=gone, placed_there=scenario.agent_id == agent)
    else:
        change = status.stop_refused(current, code=reply.code, agent=agent, message=message)
    await repo.apply_change(conn, scenario, change)
    return ReplyOutcome(done=True)


async def apply_health(conn: Conn, health: health_pb2.ChannelHealth, *, persist: bool) -> None:
    scenario = await repo.get_by_channel(conn, health.channel_id, lock=True)
    if scenario is None:
        return
    if scenario.agent_id is not None and health.agent_id and health.agent_id != scenario.agent_id:
        return  # a report of a previous placement on another agent (e.g. a node it moved away from)
    if persist:
        await repo.set_health(conn, scenario.id, health)
    if scenario.agent_id is not None and health.pid:
        await repo.update_worker(conn, scenario.id, agent_id=scenario.agent_id, pid=health.pid)
    change = status.health_reported(
        scenario.status_value, state=health.state, pid=health.pid, reason=health.reason
    )
    await repo.apply_change(conn, scenario, change)


async def apply_status(
    conn: Conn, report: agent_pb2.AgentStatus, settings: ControlSettings
) -> tuple[bool, list[str]]:
    """Record an agent's heartbeat and reconcile the scenarios placed on it. Returns whether the agent
    (re)appeared (starts waiting for an agent are then made due at once) and the channels it runs that are
    placed on another agent now (moved away while it was silent: they must be stopped there)."""
    agent_timeout_s = settings.agent_timeout_s
    appeared = not await repo.agent_alive(conn, report.agent_id, agent_timeout_s=agent_timeout_s)
    if appeared:
        await outbox_repo.make_waiting_starts_due(conn)
    await nodes_repo.record_agent(conn, report)
    listed = {ch.channel_id: ch for ch in report.channels}
    placed = await nodes_repo.scenarios_on_agent(
        conn, report.agent_id, statuses=[int(s) for s in status.LISTED_IN_HEARTBEAT]
    )
    for scenario_id in placed:
        scenario = await repo.get(conn, scenario_id, lock=True)
        if scenario is None or scenario.agent_id != report.agent_id:
            continue
        channel = listed.get(scenario.channel_id)
        if channel is not None and channel.pid:
            await repo.update_worker(
                conn, scenario.id, agent_id=report.agent_id, pid=channel.pid, ring=channel.ring
            )
        change = status.heartbeat(
            scenario.status_value,
            listed=channel is not None,
            running=channel is not None and not _process_gone(channel),
            placed_long_ago=channel is None
            and (
                await _restarted_since_placement(conn, scenario.id, report)
                or await _assigned_before(conn, scenario.id, agent_timeout_s, report)
            ),
            agent=report.agent_id,
            failover=settings.failover,
        )
        # A decoder the agent lost is gone with it: nothing to stop there before it starts again.
        await placement.carry_out(conn, scenario, settings, change, release_old=True)
    return appeared, await _placed_elsewhere(conn, report)


async def _placed_elsewhere(conn: Conn, report: agent_pb2.AgentStatus) -> list[str]:
    running = [ch.channel_id for ch in report.channels if ch.channel_id and not _process_gone(ch)]
    if not running:
        return []
    return await nodes_repo.channels_placed_elsewhere(conn, running, agent_id=report.agent_id)


async def _assigned_before(
    conn: Conn, scenario_id: uuid.UUID, seconds: float, report: agent_pb2.AgentStatus
) -> bool:
    # A heartbeat assembled just before the agent took the channel must not count as "lost it", even when we
    # handle it late (a busy control plane): the report must also be made well after the placement.
    made = report.report_time.ToDatetime(UTC) if report.HasField("report_time") else None
    return await repo.placed_before(
        conn, scenario_id, seconds=seconds, reported=made, margin_s=min(seconds, 1.0)
    )


async def _restarted_since_placement(
    conn: Conn, scenario_id: uuid.UUID, report: agent_pb2.AgentStatus
) -> bool:
    # The agent process started after the scenario was placed on it and does not list the channel: the
    # decoder went down with the previous process. A second of margin covers clocks of two hosts a little
    # apart (a later start by less than that waits for the usual timeout).
    if not report.HasField("start_time"):
        return False
    started = report.start_time.ToDatetime(UTC)
    return await repo.placed_before_time(conn, scenario_id, started, margin_s=1.0)


async def reconcile_dead_agents(conn: Conn, settings: ControlSettings) -> int:
    """Scenarios on agents silent for longer than the timeout: stopping ones INACTIVE; running ones move to
    another node (``placement``), and so do those of drained nodes."""
    stopping = await nodes_repo.scenarios_of_silent_agents(
        conn, agent_timeout_s=settings.agent_timeout_s, statuses=[int(lifecycle.IN_SHUTDOWN_PROCESSING)]
    )
    changed = 0
    for scenario_id, agent_id in stopping:
        scenario = await repo.get(conn, scenario_id, lock=True)
        if scenario is None:
            continue
        change = status.agent_lost_while_stopping(scenario.status_value, agent=agent_id)
        await repo.apply_change(conn, scenario, change)
        changed += bool(change)
    return changed + await placement.reconcile(conn, settings)


class AgentSync:
    """Subscribes to agent replies, channel health and agent heartbeats; runs the periodic reconcile."""

    def __init__(
        self,
        pool: Pool,
        bus: NatsConnection,
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
            report = agent_pb2.AgentStatus.FromString(msg.data)
        except Exception:
            return
        if not report.agent_id:
            return
        for channel in report.channels:
            if channel.HasField("health") and channel.channel_id:
                known = self.latest_health.get(channel.channel_id)
                if known is None or known.report_time_ns <= channel.health.report_time_ns:
                    self.latest_health[channel.channel_id] = channel.health
        try:
            async with self._pool.connection() as conn, conn.transaction():
                appeared, elsewhere = await apply_status(conn, report, self._settings)
            for channel_id in elsewhere:
                await self._fence(report.agent_id, channel_id)
            if appeared:
                _log.info("decoder agent available", agent=report.agent_id, max_workers=report.max_workers)
                if self._on_agent_appeared is not None:
                    self._on_agent_appeared()
        except Exception:
            _log.exception("applying an agent heartbeat failed", agent=report.agent_id)
