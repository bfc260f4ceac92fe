"""One channel's decoder process under supervision: start, restart after a crash with backoff, stop.

A process that exits 0 (stopped, or its file ended) or ``EXIT_FAILED`` (permanent source failure) has done
what it could and is not restarted. Anything else (a crash, SIGKILL, the OOM killer) is restarted after an
exponential backoff with jitter that resets once a process has run for a while. Whenever no process holds
the ring (after an exit, and at stop) the ring is removed if its writer is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable

from google.protobuf.timestamp_pb2 import Timestamp

from vap_common.backoff import Backoff
from vap_common.logs import get_logger
from vap_common.redact import redact_url
from vap_common.tasks import cancel_and_wait
from vap_decoder.health import FAILED, RECONNECTING, STOPPED, TERMINAL_STATES
from vap_decoder.process import EXIT_FAILED, EXIT_OK, channel_argv
from vap_decoder.settings import DecoderSettings
from vap_proto.v1.agent_pb2 import ChannelProcess, StartChannel
from vap_proto.v1.health_pb2 import ChannelHealth
from vap_shmring import cleanup_stale_rings, ring_name

_log = get_logger("vap.decoder.supervisor")

HealthSink = Callable[[ChannelHealth], Awaitable[None]]
_FINAL_REPORT_WAIT_S = 1.0


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


class ChannelSupervisor:
    def __init__(
        self,
        start: StartChannel,
        settings: DecoderSettings,
        env: dict[str, str],
        publish_health: HealthSink,
    ) -> None:
        self.start = start
        self.channel_id = start.channel_id
        self.spec_bytes = start.SerializeToString(deterministic=True)
        self.settings = settings
        self.ring = ring_name(start.channel_id, settings.ring_prefix)
        self.ring_slots = start.source.ring_slots or settings.ring_slots
        self.redacted_url = redact_url(start.source.url)
        self.start_time = Timestamp()
        self.start_time.GetCurrentTime()
        self.proc: asyncio.subprocess.Process | None = None
        self.last_pid = 0
        self.restarts = 0
        self.exit_code: int | None = None
        # Running or waiting to restart: counts against MAX_WORKERS. False once ended, failed or stopped.
        self.active = True
        self.health = ChannelHealth(
            channel_id=start.channel_id, scenario_id=start.scenario_id, agent_id=settings.agent_id
        )
        self._env = env
        self._publish_health = publish_health
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(settings.restart_backoff_initial_s, settings.restart_backoff_max_s)
        self._spawned_at = 0.0
        self._final_report = asyncio.Event()
        self._log = _log.bind(channel=start.channel_id)

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def pid(self) -> int:
        proc = self.proc
        return proc.pid if proc is not None and proc.returncode is None else 0

    def same_spec(self, start: StartChannel) -> bool:
        return start.SerializeToString(deterministic=True) == self.spec_bytes

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def launch(self) -> None:
        """Start the first process (OSError if it cannot be spawned) and supervise it in the background."""
        await self._spawn()
        self._task = asyncio.create_task(self._supervise(), name=f"supervise-{self.channel_id}")

    async def _spawn(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *channel_argv(self.restarts), stdin=asyncio.subprocess.PIPE, env=self._env
        )
        # Known before its first health report can arrive: reports are matched to the current pid.
        self.proc = proc
        self.last_pid = proc.pid
        self.exit_code = None
        self._spawned_at = time.monotonic()
        self._final_report.clear()
        assert proc.stdin is not None
        try:
            proc.stdin.write(self.spec_bytes)
            await proc.stdin.drain()
            proc.stdin.close()
            await proc.stdin.wait_closed()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died at once; its exit status tells the rest
        self._log.info("decoder process started", pid=proc.pid, restarts=self.restarts)

    async def _supervise(self) -> None:
        while not self._stopping:
            proc = self.proc
            if proc is None:
                try:
                    await self._spawn()
                except OSError as exc:
                    await self._crashed(f"could not be started: {exc}")
                continue
            code = await proc.wait()
            self.exit_code = code
            if self.stopping:  # stop() reaps the process and reports
                return
            self.proc = None
            if code in (EXIT_OK, EXIT_FAILED):
                await self._ended(code)
                self._remove_ring()
                return
            await self._crashed(describe_exit(code))

    async def _ended(self, code: int) -> None:
        self.active = False
        self._log.info("decoder process ended", exit_code=code)
        # Its final report was published before it exited but may still be on its way to us; a report
        # of ours published first would overwrite its precise reason for every other subscriber.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._final_report.wait(), _FINAL_REPORT_WAIT_S)
        if self.health.state in TERMINAL_STATES:
            return  # the process reported why (the usual case)
        health = self._health_copy(pid=0)
        if code == EXIT_FAILED:
            health.state = FAILED
            health.reason = health.reason or "decoder process ended: the source failed permanently"
        else:
            health.state = STOPPED
            health.reason = "decoder process ended"
        self._set_health(health)
        await self._publish_health(health)  # its own final report has not arrived (yet)

    async def _crashed(self, how: str) -> None:
        if time.monotonic() - self._spawned_at > self.settings.restart_reset_after_s:
            self._backoff.reset()
        delay = self._backoff.next_delay()
        self.restarts += 1
        reason = f"decoder process {how}; restart {self.restarts} in {delay:.2f} s"
        self._log.warning("decoder process crashed", reason=reason, exit_code=self.exit_code)
        self._remove_ring()
        health = self._health_copy(pid=0)
        health.state = RECONNECTING
        health.reason = reason
        health.next_retry_time_ns = time.time_ns() + int(delay * 1e9)
        self._set_health(health)
        await self._publish_health(health)
        await asyncio.sleep(delay)

    async def stop(self, grace: float) -> None:
        """SIGTERM the process, SIGKILL it after ``grace`` seconds, remove the ring, report STOPPED."""
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                self._log.warning("decoder process ignored SIGTERM; killing it", pid=proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            self.exit_code = proc.returncode
        await cancel_and_wait(self._task)
        self.proc = None
        self.active = False
        self._remove_ring()
        health = self._health_copy(pid=0)
        if health.state not in TERMINAL_STATES:
            health.state = STOPPED
            health.reason = "stopped on request"
        self._set_health(health)
        await self._publish_health(health)
        self._log.info("channel stopped", exit_code=self.exit_code)

    def _remove_ring(self) -> None:
        # Only removes it when no live process holds its writer lock.
        if cleanup_stale_rings(only=[self.ring]):
            self._log.info("ring removed", ring=self.ring)

    # --- health ------------------------------------------------------------------------------------------

    def _health_copy(self, *, pid: int) -> ChannelHealth:
        health = ChannelHealth()
        health.CopyFrom(self.health)
        health.pid = pid
        health.agent_id = self.settings.agent_id
        health.process_restarts = self.restarts
        health.next_retry_time_ns = 0
        return health

    def _set_health(self, health: ChannelHealth) -> None:
        now = time.time_ns()
        if health.state != self.health.state:
            health.state_since_ns = now
        health.report_time_ns = now
        self.health = health

    def accept_process_health(self, health: ChannelHealth) -> bool:
        """Take a report published by our decoder process; reports from a previous (dead) process are
        ignored, except the final one of the last process (published just before it exited)."""
        if health.pid == 0:
            return False  # one of the agent's own reports
        current = self.pid
        if health.pid != current and not (
            current == 0 and health.pid == self.last_pid and health.state in TERMINAL_STATES
        ):
            return False
        health.process_restarts = self.restarts
        self.health = health
        if health.state in TERMINAL_STATES:
            self._final_report.set()
        return True

    def describe(self) -> ChannelProcess:
        out = ChannelProcess(
            channel_id=self.channel_id,
            scenario_id=self.start.scenario_id,
            pid=self.pid,
            ring=self.ring,
            ring_slots=self.ring_slots,
            redacted_url=self.redacted_url,
            health=self.health,
        )
        out.start_time.CopyFrom(self.start_time)
        if self.exit_code is not None and self.pid == 0:
            out.exit_code = self.exit_code
        return out
