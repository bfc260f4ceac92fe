"""The two trackers behind one interface: feed a frame's detections, get the (id, box) pairs the tracker
reports for that frame.

What is scored is what each tracker reports as a tracked object in the frame: for ByteTrack from the
`trackers` package, the detections it returns with a tracker id (>= 0: confirmed); for VAP, its CONFIRMED
tracks matched in this frame (the box is the matched detection in both). Neither reports predicted boxes of
unmatched tracks, so the scoring compares association, not box extrapolation.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from vap_tracker.bytetrack import ChannelTracker, TrackerConfig
from vap_tracker.track import State

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


class Runner(Protocol):
    name: str

    def step(self, boxes: F64, scores: F64) -> tuple[I64, F64]: ...


class VapRunner:
    name = "vap"

    def __init__(self, fps: float, config: TrackerConfig | None = None) -> None:
        self.tracker = ChannelTracker(config or TrackerConfig(ref_fps=fps))

    def step(self, boxes: F64, scores: F64) -> tuple[I64, F64]:
        out = self.tracker.update(boxes, scores)
        shown = (out.state == int(State.CONFIRMED)) & (out.frames_since_update == 0)
        return out.track_id[shown], out.box[shown]


def bytetrack_available() -> str | None:
    """None when ByteTrack from `trackers` can run here, else why not."""
    try:
        import supervision  # noqa: F401
        import trackers  # noqa: F401
    except ImportError as exc:
        return f"`trackers`/`supervision` not installed ({exc}); run scripts/setup.sh"
    return None


class ByteTrackRunner:
    """trackers.ByteTrackTracker with its defaults, except the frame rate (the sequences' 25 fps)."""

    name = "bytetrack"

    def __init__(self, fps: float) -> None:
        import supervision as sv
        from trackers import ByteTrackTracker

        self._sv: Any = sv
        self.tracker: Any = ByteTrackTracker(frame_rate=fps)

    def detections(self, boxes: F64, scores: F64) -> Any:
        """The input object (built outside any timed section)."""
        return self._sv.Detections(
            xyxy=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            confidence=np.asarray(scores, dtype=np.float32),
            class_id=np.zeros(len(boxes), dtype=int),
        )

    def step(self, boxes: F64, scores: F64) -> tuple[I64, F64]:
        out = self.tracker.update(self.detections(boxes, scores))
        ids = np.asarray(out.tracker_id, dtype=np.int64)
        shown = ids >= 0
        return ids[shown], np.asarray(out.xyxy, dtype=np.float64)[shown]
