"""Everything the tracker does for one channel, without any I/O: FrameDetections in, TrackedFrame,
AnalyticsEvents and IntervalCounts out; ScenarioConfig applied at any time.

Order per frame: track (synchronous, sub-millisecond), ReID bookkeeping (harvest finished embeddings,
re-attachments, submit this frame's crops to the worker: never waits), attribute votes (the same way:
attributes/stage.py), analytics on the tracks.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from vap_proto.v1 import analytics_pb2, detection_pb2, scenario_pb2, tracking_pb2
from vap_shmring.images import FrameImage
from vap_tracker.analytics.engine import AnalyticsEngine, TrackView
from vap_tracker.appearance import detection_features
from vap_tracker.attributes.stage import AttributeConfig, AttributeStage, Classifiers
from vap_tracker.bytetrack import ChannelTracker, FrameTracks, TrackerConfig
from vap_tracker.convert import detection_arrays, tracks_to_proto
from vap_tracker.reid.embedder import Embedder
from vap_tracker.reid.gallery import SiteGallery
from vap_tracker.reid.manager import ReidConfig, ReidManager
from vap_tracker.track import State


@dataclass
class PipelineOutput:
    tracked: tracking_pb2.TrackedFrame
    events: list[analytics_pb2.AnalyticsEvent] = field(default_factory=list)
    counts: list[analytics_pb2.IntervalCounts] = field(default_factory=list)


def tracker_config(base: TrackerConfig, s: scenario_pb2.TrackerSettings) -> TrackerConfig:
    """The service's defaults overridden by the fields a scenario set."""
    changes: dict[str, float | int] = {}
    for name in ("high_score_threshold", "low_score_threshold", "new_track_threshold", "match_iou_threshold"):
        if s.HasField(name):
            changes[name] = float(getattr(s, name))
    if s.HasField("min_hits"):
        changes["min_hits"] = max(1, int(s.min_hits))
    if s.HasField("lost_timeout"):
        seconds = s.lost_timeout.seconds + s.lost_timeout.nanos / 1e9
        if seconds > 0:
            changes["lost_timeout_s"] = seconds
    return replace(base, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ReidResources:
    """What a channel needs to run ReID, owned by the service and shared by its channels."""

    config: ReidConfig
    # The embedder and the worker it runs in, created on first use (a tracker whose scenarios never enable
    # ReID never loads the model).
    runtime: Callable[[], tuple[Embedder, cf.Executor]]
    gallery_for: Callable[[str], SiteGallery]  # site id -> that site's gallery (created on demand)


@dataclass(frozen=True)
class AttributeResources:
    """What a channel needs to run the attribute stage, owned by the service and shared by its channels."""

    config: AttributeConfig
    # The loaded classifiers and their worker, created on first use.
    runtime: Callable[[], tuple[Classifiers, cf.Executor]]


def relabel(tracks: FrameTracks, merges: list[tuple[int, int]]) -> FrameTracks:
    """This frame's tracks as if the re-attachments had happened before it: each young track's row carries
    the old id, and the old track's (LOST, predicted) row is dropped. The young id's end is reported with
    the next frame (REMOVED, merged_into_track_id = old)."""
    ids = tracks.track_id.copy()
    state = tracks.state.copy()
    keep = np.ones(len(ids), dtype=bool)
    for young, old in merges:
        keep &= ids != old
        rows = ids == young
        ids[rows] = old
        # As ChannelTracker.reattach leaves the old track: CONFIRMED when the young one was matched now.
        state[rows] = np.where(tracks.frames_since_update[rows] == 0, int(State.CONFIRMED), int(State.LOST))
    return replace(tracks, track_id=ids, state=state).select(keep)


class ChannelPipeline:
    def __init__(
        self,
        scenario_id: str,
        channel_id: str,
        base_config: TrackerConfig,
        reid: ReidResources | None = None,
        attributes: AttributeResources | None = None,
    ) -> None:
        self.scenario_id = scenario_id
        self.channel_id = channel_id
        self.base_config = base_config
        self.tracker = ChannelTracker(base_config)
        self.analytics = AnalyticsEngine(scenario_id, channel_id)
        self.class_names: dict[int, str] = {}
        self.revision = 0
        self.enabled = True
        self._reid_resources = reid
        self.reid: ReidManager | None = None
        self.attributes: AttributeStage | None = None
        if attributes is not None:
            classifiers, executor = attributes.runtime()
            self.attributes = AttributeStage(channel_id, classifiers, executor, attributes.config)

    @property
    def needs_frame(self) -> bool:
        """Whether process() uses the frame's pixels (appearance cue, ReID, attributes)."""
        return self.tracker.config.uses_appearance or self.reid is not None or self.attributes is not None

    # ------------------------------------------------------------------------------------------------
    def apply(self, config: scenario_pb2.ScenarioConfig) -> list[analytics_pb2.IntervalCounts]:
        """Apply a ScenarioConfig (the caller checked it is newer). Tracks and ids survive a change of
        thresholds; analytics rules swap in place. Returns count intervals closed by the change."""
        self.revision = config.revision
        pipeline = config.pipeline
        self.enabled = not pipeline.tracker.disabled
        self.tracker.reconfigure(tracker_config(self.base_config, pipeline.tracker))
        self._apply_reid(pipeline.reid)
        return self.analytics.set_settings(config.analytics)

    def _apply_reid(self, s: scenario_pb2.ReidSettings) -> None:
        res = self._reid_resources
        if not s.enabled or res is None:
            if self.reid is not None:
                self.reid.close()
                self.reid = None
            return
        cfg = res.config
        if s.HasField("match_threshold"):
            cfg = replace(cfg, match_threshold=float(s.match_threshold))
        site = s.site_id or f"scenario:{self.scenario_id}"  # no site: identities local to this scenario
        gallery = res.gallery_for(site)
        if self.reid is None or self.reid.gallery is not gallery:
            if self.reid is not None:
                self.reid.close()
            embedder, executor = res.runtime()
            self.reid = ReidManager(self.channel_id, self.tracker, embedder, executor, cfg, gallery)
        else:
            self.reid.config = cfg

    def process(self, fd: detection_pb2.FrameDetections, frame: FrameImage | None = None) -> PipelineOutput:
        start = time.perf_counter()
        info = fd.frame
        boxes, scores, classes = detection_arrays(fd, self.class_names)
        now_s = info.capture_time_ns / 1e9
        features = None
        if frame is not None and self.tracker.config.uses_appearance:
            features = detection_features(frame, boxes, scores, self.tracker.config.high_score_threshold)
        tracks = self.tracker.update(
            boxes, scores, classes, now_s if info.capture_time_ns else None, features=features
        )
        events: list[analytics_pb2.AnalyticsEvent] = []
        global_ids: dict[int, int] = {}
        if self.reid is not None:
            merges = self.reid.after_frame(tracks, self.class_names, frame, self.tracker.time_s)
            for young, old in merges:
                events += self.analytics.merge(young, old, None)
            if merges:
                tracks = relabel(tracks, merges)
            global_ids = self.reid.global_ids()
        attributes = None
        if self.attributes is not None:
            self.attributes.after_frame(tracks, self.class_names, frame, self.tracker.time_s)
            attributes = self.attributes.attribute_map()
        view = TrackView(tracks, self.class_names, global_ids)
        frame_events, counts = self.analytics.process(info, view)
        events += frame_events
        tracked = tracking_pb2.TrackedFrame(
            frame=info,
            tracks=tracks_to_proto(tracks, self.class_names, global_ids, attributes),
            inference=fd.stats,
            tracking_us=int((time.perf_counter() - start) * 1e6),
            publish_time_ns=time.time_ns(),
        )
        return PipelineOutput(tracked, events, counts)

    def close(self) -> list[analytics_pb2.IntervalCounts]:
        """The scenario stopped: release ReID state, publish the open count intervals."""
        if self.reid is not None:
            self.reid.close()
            self.reid = None
        if self.attributes is not None:
            self.attributes.close()
            self.attributes = None
        return self.analytics.close()
