"""Keep at most ``target_fps`` frames per second, evenly spaced by timestamp.

The decision is made from the frame's timestamp before anything is done with its pixels, so a skipped frame
is never converted, resized or copied. Due times advance by exactly one period (not "last kept + period"),
so the average rate is the target even when it does not divide the source rate (25 -> 10 fps keeps frames
0, 3, 5, 8, 10, ...). After a gap (outage, seek, new stream epoch) the schedule restarts at the next frame.
"""

from __future__ import annotations

# A frame this early still counts as on time: timestamps converted from a time base are not exact.
_TOLERANCE_S = 1e-3


class FrameSampler:
    def __init__(self, target_fps: float | None) -> None:
        if target_fps is not None and target_fps < 0:
            raise ValueError(f"target_fps must not be negative, got {target_fps}")
        self.period = 1.0 / target_fps if target_fps else None
        self._due: float | None = None

    def reset(self) -> None:
        """Start a new schedule at the next frame (call on a new stream epoch)."""
        self._due = None

    def keep(self, t: float) -> bool:
        """True when the frame at time ``t`` (seconds, any origin) is to be kept."""
        period = self.period
        if period is None:
            return True
        due = self._due
        if due is None or t < due - period or t > due + period:
            # First frame, a timestamp jump backwards (loop, reconnect) or a gap: restart the schedule here.
            self._due = t + period
            return True
        if t + _TOLERANCE_S >= due:
            self._due = due + period
            return True
        return False
