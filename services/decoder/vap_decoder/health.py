"""A channel's state machine and counters, and the ChannelHealth messages made from them.

The decode thread bumps plain integer counters (no lock on the per-frame path: CPython makes each
``+=`` on an attribute safe enough for monotonic counters read by one reporter) and calls ``set_state`` on
transitions. Every transition is published at once by the thread that made it, so no state is missed
however briefly it lasted; a reporter thread publishes a snapshot at least every ``interval`` with the
rates (fps, decode fps, decode/write ms) computed over the time since its previous report.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from vap_common.redact import redact_text
from vap_proto.v1.health_pb2 import ChannelHealth, ChannelState

CONNECTING = ChannelState.CHANNEL_STATE_CONNECTING
STREAMING = ChannelState.CHANNEL_STATE_STREAMING
RECONNECTING = ChannelState.CHANNEL_STATE_RECONNECTING
FAILED = ChannelState.CHANNEL_STATE_FAILED
STOPPED = ChannelState.CHANNEL_STATE_STOPPED
TERMINAL_STATES = frozenset({FAILED, STOPPED})

# Legal transitions; anything else is a bug in the channel loop, reported loudly in tests.
_ALLOWED: dict[int, frozenset[int]] = {
    ChannelState.CHANNEL_STATE_UNSPECIFIED: frozenset({CONNECTING, FAILED, STOPPED}),
    CONNECTING: frozenset({STREAMING, RECONNECTING, FAILED, STOPPED}),
    STREAMING: frozenset({RECONNECTING, FAILED, STOPPED}),
    RECONNECTING: frozenset({STREAMING, RECONNECTING, FAILED, STOPPED}),
    FAILED: frozenset(),
    STOPPED: frozenset(),
}


def state_name(state: int) -> str:
    """'streaming' for CHANNEL_STATE_STREAMING: the label used in logs and metrics."""
    return ChannelState.Name(state).removeprefix("CHANNEL_STATE_").lower()  # type: ignore[arg-type]


class HealthTracker:
    """Counters and state of one channel in its decoder process."""

    def __init__(
        self,
        channel_id: str,
        *,
        scenario_id: str = "",
        agent_id: str = "",
        pid: int = 0,
        process_restarts: int = 0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.channel_id = channel_id
        self.scenario_id = scenario_id
        self.agent_id = agent_id
        self.pid = pid
        self.process_restarts = process_restarts
        self._clock_ns = clock_ns
        self._lock = threading.Lock()  # state fields and the rate window; never taken per frame
        self.state: int = ChannelState.CHANNEL_STATE_UNSPECIFIED
        self.reason = ""
        self.state_since_ns = clock_ns()
        self.next_retry_time_ns = 0
        # Counters, written by the decode thread only.
        self.frames_decoded = 0
        self.frames_skipped = 0
        self.frames_published = 0
        self.frames_unpublished = 0  # committed to the ring but not sent (NATS down)
        self.decode_errors = 0
        self.reconnects = 0
        self.stream_epoch = 0
        self.decode_time_s = 0.0
        self.write_time_s = 0.0
        self.last_frame_time_ns = 0
        # Source facts.
        self.width = 0
        self.height = 0
        self.codec = ""
        self.source_fps = 0.0
        # Rates over the last reporting window.
        self._window: tuple[float, int, int, float, float] | None = None
        self.fps = 0.0
        self.decode_fps = 0.0
        self.decode_ms = 0.0
        self.write_ms = 0.0

    def set_state(self, state: int, reason: str = "", *, next_retry_time_ns: int = 0) -> bool:
        """Move to ``state``; returns False (and changes nothing) when it is already the current state with
        the same reason. Raises ValueError for an illegal transition."""
        reason = redact_text(reason)  # reasons quote FFmpeg errors, which quote URLs
        with self._lock:
            if (
                state == self.state
                and reason == self.reason
                and next_retry_time_ns == self.next_retry_time_ns
            ):
                return False
            if state != self.state and state not in _ALLOWED[self.state]:
                raise ValueError(
                    f"illegal channel transition {state_name(self.state)} -> {state_name(state)}"
                )
            if state != self.state:
                self.state_since_ns = self._clock_ns()
            self.state = state
            self.reason = reason
            self.next_retry_time_ns = next_retry_time_ns
        return True

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def update_rates(self, now: float | None = None, *, min_window_s: float = 0.5) -> None:
        """Recompute fps and per-frame times over the time since the previous call (at least
        ``min_window_s``; shorter calls keep the previous figures)."""
        now = time.monotonic() if now is None else now
        current = (now, self.frames_decoded, self.frames_published, self.decode_time_s, self.write_time_s)
        with self._lock:
            previous = self._window
            if previous is None:
                self._window = current
                return
            dt = now - previous[0]
            if dt < min_window_s:
                return
            decoded = current[1] - previous[1]
            published = current[2] - previous[2]
            self.decode_fps = decoded / dt
            self.fps = published / dt
            self.decode_ms = (current[3] - previous[3]) * 1e3 / decoded if decoded else 0.0
            self.write_ms = (current[4] - previous[4]) * 1e3 / published if published else 0.0
            self._window = current

    def snapshot(self) -> ChannelHealth:
        with self._lock:
            return ChannelHealth(
                channel_id=self.channel_id,
                scenario_id=self.scenario_id,
                state=self.state,  # type: ignore[arg-type]
                reason=self.reason,
                reconnect_count=self.reconnects,
                fps=self.fps,
                source_fps=self.source_fps,
                last_frame_time_ns=self.last_frame_time_ns,
                frames_total=self.frames_published,
                frames_dropped=self.frames_skipped + self.frames_unpublished,
                decode_errors=self.decode_errors,
                stream_epoch=self.stream_epoch,
                state_since_ns=self.state_since_ns,
                report_time_ns=self._clock_ns(),
                next_retry_time_ns=self.next_retry_time_ns,
                width=self.width,
                height=self.height,
                codec=self.codec,
                agent_id=self.agent_id,
                pid=self.pid,
                process_restarts=self.process_restarts,
                frames_decoded=self.frames_decoded,
                frames_skipped=self.frames_skipped,
                decode_fps=self.decode_fps,
                decode_ms=self.decode_ms,
                write_ms=self.write_ms,
            )


class HealthReporter:
    """Publishes the tracker's snapshot every ``interval`` seconds from a daemon thread, and on demand."""

    def __init__(self, tracker: HealthTracker, publish: Callable[[bytes], object], interval: float) -> None:
        self.tracker = tracker
        self._publish = publish
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"health-{tracker.channel_id}", daemon=True)
        self._lock = threading.Lock()  # one report at a time, so reports go out in order

    def start(self) -> None:
        self.tracker.update_rates()
        self._thread.start()

    def report(self) -> ChannelHealth:
        """Publish a snapshot now (after a state change, from the thread that made it)."""
        with self._lock:
            health = self.tracker.snapshot()
            self._publish(health.SerializeToString())
        return health

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tracker.update_rates()
            self.report()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
