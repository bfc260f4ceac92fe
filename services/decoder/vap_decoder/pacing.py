"""Deliver a file's frames at their presentation rate, like a live camera (SourceSpec.realtime)."""

from __future__ import annotations

import threading
import time

# Behind by more than this (a slow consumer, a paused process): start a new schedule instead of bursting
# to catch up.
_MAX_LAG_S = 1.0


class RealtimePacer:
    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._anchor: tuple[float, float] | None = None  # (monotonic time, media time) of the schedule start

    def reset(self) -> None:
        """Start a new schedule at the next frame (new stream epoch, loop)."""
        self._anchor = None

    def wait(self, t: float) -> bool:
        """Sleep until media time ``t`` is due; False when a stop was requested meanwhile."""
        now = time.monotonic()
        anchor = self._anchor
        if anchor is None or t < anchor[1]:
            self._anchor = (now, t)
            return not self._stop.is_set()
        delay = anchor[0] + (t - anchor[1]) - now
        if delay < -_MAX_LAG_S:
            self._anchor = (now, t)
            return not self._stop.is_set()
        if delay > 0:
            return not self._stop.wait(delay)
        return not self._stop.is_set()
