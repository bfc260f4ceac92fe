"""Stream time of each decoded frame, strictly increasing within one open of a source (one stream epoch).

Consumers (sampler, pacer, tracker, the frame's ``pts_us``) need time to move forward. Sources do not always
give that: an RTSP session's first picture often has no pts (it arrives before the RTCP mapping), a broken
stream can repeat one, a camera can step its clock back. Rules:
- a frame with a pts that moves forward keeps it exactly (times are the source's, unchanged);
- a frame without a pts gets the previous frame's time plus one frame interval (the first frame: 0);
- a pts that repeats or steps back shifts the clock forward from there, so that frame lands one interval
  after the previous one and the frames after it keep their own spacing. Each such repair is counted.
"""

from __future__ import annotations

DEFAULT_FPS = 25.0


class StreamClock:
    def __init__(self, time_base: float = 0.0, fps: float = 0.0) -> None:
        self.repairs = 0  # over the clock's life (every epoch), for health and logs
        self.reset(time_base, fps)

    def reset(self, time_base: float, fps: float) -> None:
        """A new open of the source: its own time base and frame rate, no previous frame."""
        self._time_base = time_base
        self._interval = 1.0 / (fps if fps > 0 else DEFAULT_FPS)
        self._offset = 0.0
        self._last: float | None = None

    def seconds(self, pts: int | None) -> tuple[float, bool]:
        """The frame's time in seconds, and whether it had to be repaired (missing or non-increasing pts)."""
        last = self._last
        if pts is None or not self._time_base:
            t = 0.0 if last is None else last + self._interval
            repaired = last is not None or pts is not None
        else:
            t = pts * self._time_base + self._offset
            repaired = last is not None and t <= last
            if repaired:
                assert last is not None
                self._offset += last + self._interval - t
                t = last + self._interval
        if repaired:
            self.repairs += 1
        self._last = t
        return t, repaired
