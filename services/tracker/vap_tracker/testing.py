"""Scripted scenes for tests and demos: people walking along waypoints, their detections as
FrameDetections, their pixels as a BGR image, and rule builders."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from google.protobuf.duration_pb2 import Duration

from vap_proto.v1 import analytics_pb2, common_pb2, detection_pb2, frame_pb2, scenario_pb2

F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]

T0_NS = 1_700_000_000_000_000_000  # a fixed wall-clock start: events and intervals are reproducible
FPS = 25.0


@dataclass
class Walker:
    """A person whose bottom-centre follows ``path`` (one (x, y) per frame); ``hidden`` frames produce no
    detection (occlusion), but the person is still drawn unless ``invisible``."""

    path: list[tuple[float, float]]
    width: float = 40.0
    height: float = 100.0
    shirt: tuple[int, int, int] = (0, 0, 200)  # BGR
    trousers: tuple[int, int, int] = (200, 0, 0)
    hidden: set[int] = field(default_factory=set)
    score: float = 0.9
    class_id: int = 0
    start: int = 0  # first frame the walker exists

    def box(self, frame: int) -> F64 | None:
        k = frame - self.start
        if k < 0 or k >= len(self.path):
            return None
        x, y = self.path[k]
        return np.array([x - self.width / 2, y - self.height, x + self.width / 2, y])

    def detected(self, frame: int) -> bool:
        return self.box(frame) is not None and frame not in self.hidden


def line_path(start: tuple[float, float], end: tuple[float, float], frames: int) -> list[tuple[float, float]]:
    xs = np.linspace(start[0], end[0], frames)
    ys = np.linspace(start[1], end[1], frames)
    return [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]


def waypoints(points: Sequence[tuple[float, float]], frames_per_leg: int) -> list[tuple[float, float]]:
    path: list[tuple[float, float]] = []
    for a, b in itertools.pairwise(points):
        leg = line_path(a, b, frames_per_leg + 1)
        path += leg[:-1]
    path.append((float(points[-1][0]), float(points[-1][1])))
    return path


def frame_info(
    frame: int, channel: str, scenario: str = "", width: int = 640, height: int = 480
) -> frame_pb2.FrameInfo:
    return frame_pb2.FrameInfo(
        channel_id=channel,
        scenario_id=scenario,
        sequence=frame,
        capture_time_ns=T0_NS + round(frame * 1e9 / FPS),
        width=width,
        height=height,
    )


def detections(
    frame: int,
    walkers: Sequence[Walker],
    channel: str,
    scenario: str = "",
    names: Sequence[str] = ("person",),
    jitter: float = 0.0,
    rng: np.random.Generator | None = None,
) -> detection_pb2.FrameDetections:
    fd = detection_pb2.FrameDetections(frame=frame_info(frame, channel, scenario))
    for w in walkers:
        if not w.detected(frame):
            continue
        box = w.box(frame)
        assert box is not None
        if jitter and rng is not None:
            box = box + rng.normal(0.0, jitter, 4)
        fd.detections.append(
            detection_pb2.Detection(
                box=common_pb2.BoundingBox(x1=box[0], y1=box[1], x2=box[2], y2=box[3]),
                class_id=w.class_id,
                class_name=names[w.class_id],
                confidence=w.score,
            )
        )
    return fd


def render(frame: int, walkers: Sequence[Walker], width: int = 640, height: int = 480) -> U8:
    """A grey textured background with each walker drawn as shirt over trousers."""
    rng = np.random.default_rng(1000 + frame)
    img = np.full((height, width, 3), 110, dtype=np.uint8)
    img += rng.integers(0, 20, img.shape, dtype=np.uint8)
    for w in walkers:
        box = w.box(frame)
        if box is None:
            continue
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        x1, x2 = max(0, x1), min(width, x2)
        y1, y2 = max(0, y1), min(height, y2)
        if x2 <= x1 or y2 <= y1:
            continue
        mid = (y1 + y2) // 2
        img[y1:mid, x1:x2] = w.shirt
        img[mid:y2, x1:x2] = w.trousers
    return img


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def line_rule(
    rule_id: str,
    p1: tuple[float, float],
    p2: tuple[float, float],
    *,
    min_distance: float = 0.0,
    labels: tuple[str, str] = ("in", "out"),
    directions: Sequence[int] = (),
) -> analytics_pb2.AnalyticsRule:
    return analytics_pb2.AnalyticsRule(
        rule_id=rule_id,
        name=rule_id,
        line=analytics_pb2.Line(
            p1=common_pb2.Point(x=p1[0], y=p1[1]),
            p2=common_pb2.Point(x=p2[0], y=p2[1]),
            a_to_b_label=labels[0],
            b_to_a_label=labels[1],
            min_crossing_distance=min_distance,
            counted_directions=list(directions),  # type: ignore[arg-type]
        ),
    )


def zone_rule(
    rule_id: str,
    polygon: Sequence[tuple[float, float]],
    *,
    loitering_s: float | None = None,
    dwell_every_s: float | None = None,
    min_presence_s: float | None = None,
) -> analytics_pb2.AnalyticsRule:
    zone = analytics_pb2.Zone(polygon=[common_pb2.Point(x=x, y=y) for x, y in polygon])
    if loitering_s is not None:
        zone.loitering_threshold.CopyFrom(_duration(loitering_s))
    if dwell_every_s is not None:
        zone.dwell_report_interval.CopyFrom(_duration(dwell_every_s))
    if min_presence_s is not None:
        zone.min_presence.CopyFrom(_duration(min_presence_s))
    return analytics_pb2.AnalyticsRule(rule_id=rule_id, name=rule_id, zone=zone)


def scenario_config(
    scenario: str,
    channel: str,
    revision: int,
    rules: Sequence[analytics_pb2.AnalyticsRule] = (),
    *,
    active: bool = True,
    reid: bool = False,
    site: str = "",
    count_interval_s: float | None = None,
) -> scenario_pb2.ScenarioConfig:
    config = scenario_pb2.ScenarioConfig(
        scenario_id=scenario,
        channel_id=channel,
        revision=revision,
        active=active,
        analytics=analytics_pb2.AnalyticsSettings(rules=list(rules)),
    )
    config.pipeline.reid.enabled = reid
    config.pipeline.reid.site_id = site
    if count_interval_s is not None:
        config.analytics.count_interval.CopyFrom(_duration(count_interval_s))
    return config
