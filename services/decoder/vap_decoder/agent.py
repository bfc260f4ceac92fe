"""The decoder agent: the supervisor of one host's decoder processes, driven over NATS.

- Commands: ``vap.v1.AgentCommand`` on ``subjects.agent_commands(agent_id)``, answered with an AgentReply on
  the request's reply subject (NATS request/reply) and always on ``subjects.agent_replies(agent_id)``.
  A command id is applied at most once: repeats get the first reply.
- StartChannel opens the sealed source URL with the camera keys (``vap_common.camera_secrets``; a plain
  ``source.url`` is taken as it is) and spawns a supervised decoder process (``supervisor.py``), refusing
  beyond MAX_WORKERS;
  StopChannel stops it and removes its ring; ListAgentChannels reports what runs.
- ChannelHealth from the decoder processes is received to keep each channel's latest state for replies,
  the AgentStatus heartbeat (``subjects.agent_status``) and the Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import suppress
from typing import TypeVar

from google.protobuf.message import DecodeError
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import REGISTRY, CollectorRegistry

import vap_decoder
from vap_common import subjects
from vap_common.camera_secrets import CameraKeyError, CameraKeys, load_camera_keys
from vap_common.logs import get_logger
from vap_common.redact import redact_text, remember_url_secrets
from vap_common.tasks import cancel_and_wait
from vap_decoder.errors import InvalidSourceError, SourceError
from vap_decoder.health import FAILED
from vap_decoder.metrics import DecoderMetricsCollector
from vap_decoder.process import child_environment
from vap_decoder.settings import DecoderSettings
from vap_decoder.source import plan_source
from vap_decoder.supervisor import ChannelSupervisor
from vap_proto.v1.agent_pb2 import (
    AgentChannelList,
    AgentCommand,
    AgentReply,
    AgentReplyCode,
    AgentStatus,
    StartChannel,
    StopChannel,
)
from vap_proto.v1.health_pb2 import ChannelHealth
from vap_proto.v1.nodes_pb2 import NodeCapacity

_log = get_logger("vap.decoder.agent")
_T = TypeVar("_T")

OK = AgentReplyCode.AGENT_REPLY_CODE_OK
MAX_WORKERS = AgentReplyCode.AGENT_REPLY_CODE_MAX_WORKERS
ALREADY_EXISTS = AgentReplyCode.AGENT_REPLY_CODE_ALREADY_EXISTS
INVALID_ARGUMENT = AgentReplyCode.AGENT_REPLY_CODE_INVALID_ARGUMENT
UNAVAILABLE = AgentReplyCode.AGENT_REPLY_CODE_UNAVAILABLE
INTERNAL = AgentReplyCode.AGENT_REPLY_CODE_INTERNAL


class DecoderAgent:
    def __init__(
        self, settings: DecoderSettings, nc: NatsClient, *, registry: CollectorRegistry | None = REGISTRY
    ) -> None:
        self.settings = settings
        self.agent_id = settings.agent_id
        self.nc = nc
        self._started_ns = time.time_ns()  # reported: control re-places at once what a restart lost
        self.channels: dict[str, ChannelSupervisor] = {}
        self._env = child_environment(settings)
        self._replies: OrderedDict[str, asyncio.Future[AgentReply]] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._subs: list[Subscription] = []
        self._status_task: asyncio.Task[None] | None = None
        self._closing = False
        self._registry = registry
        # Camera keys, read at the first sealed URL (the control service may create the key file later) and
        # again when none of them opens one.
        self._keys: CameraKeys | None = None
        self._collector = DecoderMetricsCollector(
            self._metric_rows, lambda: self.active_workers, settings.max_workers
        )
        self._log = _log.bind(agent=self.agent_id)

    @property
    def active_workers(self) -> int:
        return sum(1 for sup in self.channels.values() if sup.active)

    def _metric_rows(self) -> Iterator[tuple[str, ChannelHealth]]:
        for channel_id, sup in list(self.channels.items()):
            yield channel_id, sup.health

    # --- lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._registry is not None:
            self._registry.register(self._collector)
        self._subs.append(await self.nc.subscribe(subjects.all_channel_health(), cb=self._on_health))
        self._subs.append(
            await self.nc.subscribe(subjects.agent_commands(self.agent_id), cb=self._on_command)
        )
        await self.nc.flush()
        self._status_task = asyncio.create_task(self._status_loop(), name="agent-status")
        self._log.info(
            "decoder agent ready",
            commands=subjects.agent_commands(self.agent_id),
            max_workers=self.settings.max_workers,
            node=self.settings.reported_node_id,
        )

    async def close(self) -> None:
        """Refuse new channels, stop every decoder (SIGTERM, then SIGKILL after the grace period)."""
        self._closing = True
        sups = list(self.channels.values())
        await asyncio.gather(*(sup.stop(self.settings.stop_grace_s) for sup in sups), return_exceptions=True)
        self.channels.clear()
        for sub in self._subs:
            with suppress(Exception):
                await sub.unsubscribe()
        await cancel_and_wait(self._status_task)
        for task in list(self._tasks):
            task.cancel()
        with suppress(Exception):
            await self._publish_status()
        if self._registry is not None:
            self._registry.unregister(self._collector)

    # --- NATS callbacks ---------------------------------------------------------------------------------

    async def _on_health(self, msg: Msg) -> None:
        try:
            health = ChannelHealth.FromString(msg.data)
        except DecodeError:
            return
        if health.agent_id != self.agent_id:
            return
        sup = self.channels.get(health.channel_id)
        if sup is not None:
            sup.accept_process_health(health)

    async def _on_command(self, msg: Msg) -> None:
        # Handled in a task: nats-py runs a subscription's callbacks one after the other, and a stop may
        # take the whole grace period; commands for one channel are still serialised by its lock.
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: Msg) -> None:
        try:
            command = AgentCommand.FromString(msg.data)
        except DecodeError:
            reply = AgentReply(agent_id=self.agent_id, code=INVALID_ARGUMENT, message="not an AgentCommand")
            await self._send(msg, reply)
            return
        cid = command.command_id
        if cid and cid in self._replies:
            reply = await asyncio.shield(self._replies[cid])
            await self._send(msg, reply)
            return
        future: asyncio.Future[AgentReply] = asyncio.get_running_loop().create_future()
        if cid:
            self._replies[cid] = future
            while len(self._replies) > self.settings.reply_cache_size:
                self._replies.popitem(last=False)
        try:
            reply = await self._execute(command)
        except Exception as exc:
            self._log.exception("command failed", command_id=cid)
            reply = AgentReply(code=INTERNAL, message=redact_text(f"{type(exc).__name__}: {exc}"))
        reply.command_id = cid
        reply.agent_id = self.agent_id
        future.set_result(reply)
        await self._send(msg, reply)

    async def _send(self, msg: Msg, reply: AgentReply) -> None:
        data = reply.SerializeToString()
        try:
            if msg.reply:
                await self.nc.publish(msg.reply, data)
            await self.nc.publish(subjects.agent_replies(self.agent_id), data)
        except Exception as exc:  # NATS gone: the requester times out and retries with the same command id
            self._log.warning("reply not sent", command_id=reply.command_id, error=str(exc))

    # --- commands ---------------------------------------------------------------------------------------

    async def _execute(self, command: AgentCommand) -> AgentReply:
        if command.agent_id and command.agent_id != self.agent_id:
            return AgentReply(
                code=INVALID_ARGUMENT,
                message=f"command for agent {command.agent_id!r} sent to {self.agent_id!r}",
            )
        kind = command.WhichOneof("command")
        if kind == "start_channel":
            return await self._locked(command.start_channel.channel_id, self._start, command.start_channel)
        if kind == "stop_channel":
            return await self._locked(command.stop_channel.channel_id, self._stop, command.stop_channel)
        if kind == "list_channels":
            return AgentReply(code=OK, channels=self._list())
        return AgentReply(code=INVALID_ARGUMENT, message="AgentCommand without a command")

    async def _locked(
        self, channel_id: str, fn: Callable[[_T], Awaitable[AgentReply]], arg: _T
    ) -> AgentReply:
        """Run one command of a channel at a time (a start must not race a stop of the same channel)."""
        if not channel_id:
            return AgentReply(code=INVALID_ARGUMENT, message="channel_id must not be empty")
        lock = self._locks.setdefault(channel_id, asyncio.Lock())
        async with lock:
            return await fn(arg)

    def _open_sealed(self, start: StartChannel) -> StartChannel:
        """``start`` with its sealed URL opened into ``source.url`` (CameraKeyError when no key opens it). The
        plaintext goes only to the decoder process (its stdin) and stays in this process's memory."""
        if not start.sealed_url:
            return start  # a plain URL from a client that talks to the agent directly
        opened = StartChannel()
        opened.CopyFrom(start)
        try:
            if self._keys is None:
                raise CameraKeyError("no camera keys read yet")
            opened.source.url = self._keys.open(start.sealed_url)
        except CameraKeyError:
            # Read the keys again: a key file may have got the new key of a rotation since.
            self._keys = load_camera_keys(self.settings.data_dir, create=False)
            opened.source.url = self._keys.open(start.sealed_url)
        opened.ClearField("sealed_url")
        return opened

    async def _start(self, start: StartChannel) -> AgentReply:
        channel_id = start.channel_id
        if self._closing:
            return AgentReply(code=UNAVAILABLE, message=f"agent {self.agent_id} is shutting down")
        try:
            start = self._open_sealed(start)
        except CameraKeyError as exc:
            reason = f"cannot open the camera URL: {exc}"
            await self._publish_failed(start, reason)
            self._log.warning("start refused", channel=channel_id, reason=reason)
            return AgentReply(code=INVALID_ARGUMENT, message=reason)
        # From now on this process's logs, replies and health reasons hide this URL's secrets in any shape.
        remember_url_secrets(start.source.url)
        try:
            plan_source(start.source, self.settings)
        except InvalidSourceError as exc:
            # Refused up front, and reported as a FAILED channel too so dashboards show why.
            await self._publish_failed(start, exc.reason)
            self._log.warning("start refused", channel=channel_id, reason=exc.reason)
            return AgentReply(code=INVALID_ARGUMENT, message=exc.reason)
        except SourceError:
            pass  # e.g. a missing file: the decoder process reports it as FAILED, like any runtime failure
        existing = self.channels.get(channel_id)
        if existing is not None and existing.active:
            if existing.same_spec(start):
                return AgentReply(code=OK, message="already running", channel=existing.describe())
            return AgentReply(
                code=ALREADY_EXISTS,
                message=f"channel {channel_id!r} already runs with another source spec; stop it first",
            )
        if existing is not None:  # ended or failed: replace it
            del self.channels[channel_id]
        if self.active_workers >= self.settings.max_workers:
            return AgentReply(
                code=MAX_WORKERS,
                message=(
                    f"agent {self.agent_id} already runs {self.active_workers} decoder processes, its limit"
                    f" (MAX_WORKERS = {self.settings.max_workers}): channel {channel_id!r} was not started;"
                    " stop a channel or raise VAP_DECODER_MAX_WORKERS"
                ),
            )
        sup = ChannelSupervisor(start, self.settings, self._env, self._publish_health)
        self.channels[channel_id] = sup  # before any await: concurrent starts see the slot taken
        try:
            await sup.launch()
        except OSError as exc:
            del self.channels[channel_id]
            return AgentReply(code=INTERNAL, message=f"cannot start a decoder process: {exc}")
        self._log.info("channel started", channel=channel_id, source=sup.redacted_url, pid=sup.pid)
        return AgentReply(code=OK, channel=sup.describe())

    async def _stop(self, stop: StopChannel) -> AgentReply:
        sup = self.channels.get(stop.channel_id)
        if sup is None:
            return AgentReply(code=OK, message=f"channel {stop.channel_id!r} is not running")
        grace = (
            stop.grace_period.seconds + stop.grace_period.nanos / 1e9 if stop.HasField("grace_period") else 0
        )
        await sup.stop(grace if grace > 0 else self.settings.stop_grace_s)
        self.channels.pop(stop.channel_id, None)
        return AgentReply(code=OK, channel=sup.describe())

    def _list(self) -> AgentChannelList:
        return AgentChannelList(
            channels=[sup.describe() for sup in self.channels.values()], max_workers=self.settings.max_workers
        )

    # --- publishing -------------------------------------------------------------------------------------

    async def _publish_health(self, health: ChannelHealth) -> None:
        with suppress(Exception):  # NATS down: the next report will do
            await self.nc.publish(subjects.channel_health(health.channel_id), health.SerializeToString())

    async def _publish_failed(self, start: StartChannel, reason: str) -> None:
        health = ChannelHealth(
            channel_id=start.channel_id,
            scenario_id=start.scenario_id,
            agent_id=self.agent_id,
            state=FAILED,
            reason=redact_text(reason),
        )
        await self._publish_health(health)

    def capacity(self) -> NodeCapacity:
        """Node registration: what this node offers the control plane's placement."""
        s = self.settings
        return NodeCapacity(
            max_channels=s.max_workers,
            backend=s.node_backend,
            models=s.node_models,
            labels=s.node_labels,
            shm_prefix=s.ring_prefix,
        )

    def status(self) -> AgentStatus:
        status = AgentStatus(
            agent_id=self.agent_id,
            node_id=self.settings.reported_node_id,
            pid=os.getpid(),
            max_workers=self.settings.max_workers,
            channels=[sup.describe() for sup in self.channels.values()],
            version=vap_decoder.__version__,
            capacity=self.capacity(),
        )
        status.report_time.GetCurrentTime()
        status.start_time.FromNanoseconds(self._started_ns)
        return status

    async def _publish_status(self) -> None:
        await self.nc.publish(subjects.agent_status(self.agent_id), self.status().SerializeToString())

    async def _status_loop(self) -> None:
        while True:
            with suppress(Exception):
                await self._publish_status()
            await asyncio.sleep(self.settings.status_interval_s)
