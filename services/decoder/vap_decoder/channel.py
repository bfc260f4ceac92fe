"""The decode loop of one channel: open, decode into the ring, publish FrameRefs, reconnect, report health.

    CONNECTING --first frame--> STREAMING --error/EOF/stall--> RECONNECTING --first frame--> STREAMING
         \\______________________________________________________/ \\--> FAILED (permanent error, or
                                                                         max_reconnect_attempts reached)
    end of a file without loop, or a stop request --> STOPPED

Failure detection: every open and every read is bounded by a timeout (a hung camera: TCP open, no data,
e.g. SIGSTOP) and a stall timer catches a source that delivers packets but no decodable frame. Corrupt data
is counted and logged (rate-limited) and decoding carries on. Per frame, a skipped frame (sampling) is
dropped before its pixels are touched; a kept one is handed to the output stage (``output.py``), which
writes it straight into its ring slot and publishes its FrameRef.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import av
import av.error

from vap_common import subjects
from vap_common.backoff import Backoff
from vap_common.logs import get_logger
from vap_decoder.errors import PermanentSourceError, SourceError, TransientSourceError
from vap_decoder.health import (
    CONNECTING,
    FAILED,
    RECONNECTING,
    STOPPED,
    STREAMING,
    HealthReporter,
    HealthTracker,
    state_name,
)
from vap_decoder.output import FrameOutput, Publisher
from vap_decoder.pacing import RealtimePacer
from vap_decoder.ring_sink import RingSink
from vap_decoder.sampler import FrameSampler
from vap_decoder.settings import DecoderSettings
from vap_decoder.source import OpenSource, SourcePlan, classify_error, describe, open_source, plan_source
from vap_decoder.timestamps import StreamClock
from vap_proto.v1.agent_pb2 import StartChannel

_log = get_logger("vap.decoder.channel")


class StopRequestedError(Exception):
    """Raised inside the loop to unwind to the top when a stop was requested."""


class SessionEnd(enum.Enum):
    EOF = "eof"


@dataclass(frozen=True)
class ChannelResult:
    state: int  # STOPPED or FAILED
    reason: str


class RateLimitedLog:
    """At most one log line per ``period`` seconds for a recurring problem (corrupt data can come at frame
    rate); the next line says how many occurrences were not logged."""

    def __init__(self, period: float = 5.0) -> None:
        self.period = period
        self._last = -float("inf")
        self._suppressed = 0

    def __call__(self, event: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.period:
            self._suppressed += 1
            return
        _log.warning(event, suppressed=self._suppressed, **fields)
        self._last = now
        self._suppressed = 0


def _seconds(duration: Any, default: float) -> float:
    value = duration.seconds + duration.nanos / 1e9
    return value if value > 0 else default


class ChannelRunner:
    """Runs one channel until it is stopped, its file ends, or it fails permanently. ``run()`` blocks."""

    def __init__(
        self,
        start: StartChannel,
        settings: DecoderSettings,
        publisher: Publisher | None,
        *,
        pid: int = 0,
        process_restarts: int = 0,
    ) -> None:
        spec = start.source
        self.start = start
        self.spec = spec
        self.settings = settings
        self.channel_id = start.channel_id
        self._publisher = publisher
        self._frames_subject = subjects.frames(start.channel_id, settings.node_id)
        self._health_subject = subjects.channel_health(start.channel_id)
        self.health = HealthTracker(
            start.channel_id,
            scenario_id=start.scenario_id,
            agent_id=settings.agent_id,
            pid=pid,
            process_restarts=process_restarts,
        )
        self.reporter = HealthReporter(self.health, self._publish_health, settings.health_interval_s)
        resize = (spec.resize.width, spec.resize.height) if spec.HasField("resize") else None
        self.sink = RingSink(
            start.channel_id,
            scenario_id=start.scenario_id,
            pixel_format=spec.pixel_format,
            resize=resize,
            slots=spec.ring_slots or settings.ring_slots,
            name_prefix=settings.ring_prefix,
        )
        self.sampler = FrameSampler(spec.target_fps if spec.HasField("target_fps") else None)
        self.backoff = Backoff(settings.backoff_initial_s, _seconds(spec.backoff_max, settings.backoff_max_s))
        self.stall_timeout_s = _seconds(spec.stall_timeout, settings.stall_timeout_s)
        self._stop = threading.Event()
        self._pacer = RealtimePacer(self._stop)
        self._clock = StreamClock()
        self.sequence = 0
        self._opens = 0
        self._output: FrameOutput | None = None  # started by run()
        self._log = _log.bind(channel=start.channel_id)
        self._log_corrupt = RateLimitedLog()

    # --- control -------------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the loop to end (thread-safe); it notices between packets and in every wait."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def _publish_health(self, payload: bytes) -> None:
        if self._publisher is not None:
            self._publisher.publish(self._health_subject, payload)

    def _transition(self, state: int, reason: str = "", *, next_retry_time_ns: int = 0) -> None:
        if self.health.set_state(state, reason, next_retry_time_ns=next_retry_time_ns):
            self.health.update_rates()
            self.reporter.report()
            log = self._log.warning if state in (RECONNECTING, FAILED) else self._log.info
            log("channel state", state=state_name(state), reason=self.health.reason)

    # --- the loop ------------------------------------------------------------------------------------------

    def run(self) -> ChannelResult:
        self.reporter.start()
        self._output = FrameOutput(self.sink, self._publisher, self._frames_subject, self.health)
        try:
            try:
                result = self._run()
            except StopRequestedError:
                result = ChannelResult(STOPPED, "stopped on request")
            finally:
                self._output.close()  # the frames already decoded still reach the ring before the report
        finally:
            self.reporter.stop()
            self.sink.close()
        self._transition(result.state, result.reason)
        return result

    def finish_abandoned(self) -> None:
        """Report STOPPED from another thread when the loop cannot be unwound in time (it is blocked in
        FFmpeg until a timeout); the process exits right after."""
        self.reporter.stop()
        if not self.health.terminal:
            self._transition(STOPPED, "stopped on request")

    def _run(self) -> ChannelResult:
        try:
            plan = plan_source(self.spec, self.settings)
        except SourceError as exc:
            return ChannelResult(FAILED, exc.reason)
        self._log.info("channel starting", source=plan.redacted_url, kind=plan.kind.value)
        self._transition(CONNECTING, f"opening {plan.redacted_url}")
        failures = 0
        outage_since = time.monotonic()  # the camera has not streamed yet: a fresh start is an "outage" too
        while not self._stop.is_set():
            streamed_before = self.health.frames_decoded
            try:
                self._session(plan)
            except SourceError as exc:
                error: SourceError = exc
            else:  # end of input
                got_frames = self.health.frames_decoded > streamed_before
                if plan.live:
                    error = TransientSourceError(f"stream ended: {plan.redacted_url} closed the connection")
                elif not got_frames:
                    error = PermanentSourceError(f"no decodable video frame in {plan.redacted_url}")
                elif plan.loop:
                    continue  # a new stream epoch from the start of the file
                else:
                    return ChannelResult(STOPPED, "end of file")
            if error.permanent:
                return ChannelResult(FAILED, error.reason)
            if self.health.frames_decoded > streamed_before:
                # It was streaming: an outage starts here, so the first retry comes quickly again.
                self.backoff.reset()
                failures = 0
                outage_since = time.monotonic()
            failures += 1
            limit = self.spec.max_reconnect_attempts
            if limit and failures > limit:
                return ChannelResult(FAILED, f"gave up after {limit} reconnect attempts: {error.reason}")
            delay = self.backoff.next_delay()
            if time.monotonic() - outage_since < self.settings.fast_reconnect_window_s:
                # Most outages are short (a camera or switch rebooting): retrying often for the first minute
                # gets the stream back within about a second of the camera, at the price of a cheap failed
                # connect every half second; after that the backoff grows to its cap.
                delay = min(delay, self.settings.fast_reconnect_s)
            self._transition(RECONNECTING, error.reason, next_retry_time_ns=time.time_ns() + int(delay * 1e9))
            if self._stop.wait(delay):
                break
            self.health.reconnects += 1
        return ChannelResult(STOPPED, "stopped on request")

    def _session(self, plan: SourcePlan) -> SessionEnd:
        """One open of the source, until end of input (returned) or an error (raised)."""
        with open_source(plan) as source:
            self._opens += 1
            self.health.stream_epoch = self._opens - 1
            self.health.codec = source.codec
            self.health.source_fps = source.source_fps
            self._clock.reset(source.time_base, source.source_fps)
            self.sampler.reset()
            self._pacer.reset()
            return self._pump(source, plan)

    def _packets(self, source: OpenSource, plan: SourcePlan) -> Iterator[Any]:
        packets = source.packets()
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as exc:
                raise classify_error(exc, plan, opening=False) from None
            yield packet

    def _pump(self, source: OpenSource, plan: SourcePlan) -> SessionEnd:
        health = self.health
        stop = self._stop
        streaming = False
        last_frame = time.monotonic()
        perf = time.perf_counter
        for packet in self._packets(source, plan):
            if stop.is_set():
                raise StopRequestedError
            t0 = perf()
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                # Corrupt data: count it, log it now and then, carry on with the next packet.
                health.decode_errors += 1
                self._log_corrupt("corrupt data", error=describe(exc), decode_errors=health.decode_errors)
                continue
            health.decode_time_s += perf() - t0
            now = time.monotonic()
            if not frames:
                if now - last_frame > self.stall_timeout_s:
                    raise TransientSourceError(
                        f"stalled: no frame decoded from {plan.redacted_url} for {self.stall_timeout_s:g} s"
                    )
                continue
            last_frame = now
            if not streaming:
                streaming = True
                first = frames[0]
                health.width, health.height = first.width, first.height
                self._transition(STREAMING, f"{health.codec} {first.width}x{first.height}")
            for frame in frames:
                self._on_frame(frame, plan)
        return SessionEnd.EOF

    def _on_frame(self, frame: av.VideoFrame, plan: SourcePlan) -> None:
        health = self.health
        health.frames_decoded += 1
        if frame.is_corrupt:  # FFmpeg concealed damaged macroblocks: usable, but worth counting
            health.decode_errors += 1
            self._log_corrupt("corrupt frame concealed", decode_errors=health.decode_errors)
        t, repaired = self._clock.seconds(frame.pts)
        # A missing pts is normal (RTSP's first picture); a repeated or backward one is worth a log line.
        if repaired and frame.pts is not None:
            self._log_corrupt("timestamp not increasing", pts=frame.pts, repairs=self._clock.repairs)
        # Decided on the timestamp alone: a skipped frame's pixels are never converted or copied.
        if not self.sampler.keep(t):
            health.frames_skipped += 1
            return
        if plan.realtime and not self._pacer.wait(t):
            raise StopRequestedError
        assert self._output is not None
        self._output.submit(
            frame,
            sequence=self.sequence,
            pts_us=round(t * 1e6),
            capture_time_ns=time.time_ns(),
            stream_epoch=health.stream_epoch,
        )
        self.sequence += 1
