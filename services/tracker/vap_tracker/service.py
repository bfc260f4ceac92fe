"""The tracker service: FrameDetections in, TrackedFrame / AnalyticsEvent / IntervalCounts out, per channel;
ScenarioConfig updates applied while channels run.

The message handling itself is synchronous (``handle_detections``, ``handle_config`` return what to
publish) and runs on the event loop: tracking a frame takes well under a millisecond, ReID embeddings run
in a worker thread, so there is nothing to wait for. Per channel, frames are handled in arrival order.

Channels start with the service defaults the first time their detections arrive, so tracking works even
before (or without) a ScenarioConfig; rules, ReID and per-scenario thresholds apply from the config on.
"""

from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from vap_common import subjects
from vap_common.bus import Bus, Handler
from vap_common.logs import get_logger
from vap_common.scenario_configs import ConfigRevisions, follow_scenario_configs
from vap_proto.v1 import analytics_pb2, detection_pb2, scenario_pb2, tracking_pb2
from vap_shmring import ReaderPool
from vap_shmring.images import FrameImage, RingFrame
from vap_tracker import metrics
from vap_tracker.attributes.stage import Classifiers
from vap_tracker.pipeline import AttributeResources, ChannelPipeline, PipelineOutput, ReidResources
from vap_tracker.reid.embedder import Embedder, make_embedder
from vap_tracker.reid.gallery import SiteGallery
from vap_tracker.settings import TrackerServiceSettings
from vap_tracker.sharding import ShardMember

_log = get_logger("vap.tracker")
Outgoing = list[tuple[str, bytes]]


@dataclass
class _Reid:
    embedder: Embedder
    executor: cf.ThreadPoolExecutor
    galleries: dict[str, SiteGallery] = field(default_factory=dict)


class TrackerService:
    def __init__(
        self,
        settings: TrackerServiceSettings,
        bus: Bus | None = None,
        *,
        embedder: Embedder | None = None,
        frame_pool: ReaderPool | None = None,
        classifiers: Classifiers | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.pipelines: dict[str, ChannelPipeline] = {}  # by channel id
        self._revisions = ConfigRevisions(on_undecodable=metrics.BAD_MESSAGES.labels("config").inc)
        # Sharded: the latest config of every channel (also those another tracker tracks now), applied when
        # this tracker takes a channel over.
        self._configs: dict[str, scenario_pb2.ScenarioConfig] = {}
        self.shard: ShardMember | None = None
        self._embedder = embedder
        self._reid: _Reid | None = None
        self._classifiers = classifiers
        self._attr_executor: cf.ThreadPoolExecutor | None = None
        self._pool = frame_pool if frame_pool is not None else ReaderPool()
        self._channels = frozenset(settings.channels)
        self._base = settings.tracker.config()

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        assert self.bus is not None, "start() needs a bus"
        if self.settings.shard.enabled:
            s = self.settings.shard
            self.shard = ShardMember(self.bus, s.tracker_id, heartbeat_s=s.heartbeat_s, timeout_s=s.timeout_s)
            self.shard.channels = lambda: len(self.pipelines)
            await self.shard.start()
        if self._channels:
            for channel in sorted(self._channels):
                await self.bus.subscribe(subjects.detections(channel), self._on_detections)
        else:
            await self.bus.subscribe(subjects.all_detections(), self._on_detections)
        stored = await follow_scenario_configs(
            self._subscribe_flushed, self.bus.stored_scenario_configs, self._on_config
        )
        _log.info("tracker subscribed", channels=sorted(self._channels) or "all", stored_configs=stored)

    async def _subscribe_flushed(self, subject: str, handler: Handler) -> None:
        assert self.bus is not None
        await self.bus.subscribe(subject, handler)
        await self.bus.flush()

    async def stop(self) -> None:
        if self.shard is not None:
            await self.shard.stop()  # "leaving": the others take our channels at once
        out: Outgoing = []
        for channel, pipe in list(self.pipelines.items()):
            out += self._counts_out(channel, pipe.close())
        self.pipelines.clear()
        if self.bus is not None:
            for subject, payload in out:
                await self.bus.publish(subject, payload)
            await self.bus.flush()
        if self._reid is not None:
            self._reid.executor.shutdown(wait=True, cancel_futures=True)
            self._reid = None
        if self._attr_executor is not None:
            self._attr_executor.shutdown(wait=True, cancel_futures=True)
            self._attr_executor = None
        self._pool.close()

    async def _on_config(self, subject: str, payload: bytes) -> None:
        await self._publish(self.handle_config(payload))

    async def _on_detections(self, subject: str, payload: bytes) -> None:
        await self._publish(self.handle_detections(payload))

    async def _publish(self, out: Outgoing) -> None:
        if self.bus is not None:
            for subject, data in out:
                await self.bus.publish(subject, data)

    # -- message handling (synchronous core) -------------------------------------------------------------
    def handle_config(self, payload: bytes) -> Outgoing:
        config = self._revisions.newer(payload)
        if config is None:
            return []  # undecodable, or an older (or repeated) revision: the one we hold is newer
        channel = config.channel_id
        if not channel or (self._channels and channel not in self._channels):
            return []
        if self.shard is not None:
            self._configs[channel] = config
            if not self.shard.owns(channel):
                self.pipelines.pop(channel, None)  # tracked elsewhere now; its counts are published there
                return []
        pipe = self.pipelines.get(channel)
        if not config.active:
            if pipe is None:
                return []
            del self.pipelines[channel]
            _log.info("scenario stopped", scenario=config.scenario_id, channel=channel)
            return self._counts_out(channel, pipe.close())
        if pipe is None or pipe.scenario_id != config.scenario_id:
            out = self._counts_out(channel, pipe.close()) if pipe is not None else []
            pipe = self.pipelines[channel] = self._new_pipeline(config.scenario_id, channel)
        else:
            out = []
        out += self._counts_out(channel, pipe.apply(config))
        _log.info(
            "scenario config applied",
            scenario=config.scenario_id,
            channel=channel,
            revision=config.revision,
            rules=len(config.analytics.rules),
            reid=config.pipeline.reid.enabled,
        )
        return out

    def handle_detections(self, payload: bytes) -> Outgoing:
        fd = detection_pb2.FrameDetections()
        try:
            fd.ParseFromString(payload)
        except DecodeError:
            metrics.BAD_MESSAGES.labels("detections").inc()
            return []
        channel = fd.frame.channel_id
        if not channel or (self._channels and channel not in self._channels):
            return []
        if self.shard is not None and not self.shard.owns(channel):
            if self.pipelines.pop(channel, None) is not None:
                _log.info("channel handed to another tracker", channel=channel)
            return []
        pipe = self.pipelines.get(channel)
        if pipe is None:
            pipe = self.pipelines[channel] = self._new_pipeline(fd.frame.scenario_id, channel)
            config = self._configs.get(channel)
            if config is not None and config.active and config.scenario_id == fd.frame.scenario_id:
                pipe.apply(config)  # taken over: the scenario's rules as the previous tracker had them
        if not pipe.enabled:
            return []
        frame: FrameImage | None = None
        if pipe.needs_frame and fd.HasField("frame_ref"):
            frame = RingFrame(self._pool, fd.frame_ref)
        result = pipe.process(fd, frame)
        self._observe(channel, pipe, result)
        return self._frame_out(channel, result)

    # -- helpers ---------------------------------------------------------------------------------------
    def _new_pipeline(self, scenario_id: str, channel: str) -> ChannelPipeline:
        _log.info("channel started", scenario=scenario_id, channel=channel)
        attributes = None
        if self.settings.attributes.enabled:
            attributes = AttributeResources(self.settings.attributes.config(), self._attribute_runtime)
        return ChannelPipeline(scenario_id, channel, self._base, self._reid_resources(), attributes)

    def _attribute_runtime(self) -> tuple[Classifiers, cf.Executor]:
        """Classifiers and their worker, loaded for the first channel (a bad classifier file raises
        ClassifierLoadError naming it; ``load_attribute_classifiers`` does it at start)."""
        if self._classifiers is None:
            self._classifiers = self.settings.attributes.load()
            _log.info("attribute classifiers ready", classifiers=self._classifiers.names)
        if self._attr_executor is None:
            self._attr_executor = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vap-attributes")
        return self._classifiers, self._attr_executor

    def load_attribute_classifiers(self) -> None:
        """Load the configured classifiers now (at start), so a bad file stops the service at once."""
        if self.settings.attributes.enabled:
            self._attribute_runtime()

    def _reid_resources(self) -> ReidResources:
        return ReidResources(
            config=self.settings.reid.config(), runtime=self._reid_runtime, gallery_for=self._gallery
        )

    def _reid_runtime(self) -> tuple[Embedder, cf.Executor]:
        state = self._reid_state()
        return state.embedder, state.executor

    def _reid_state(self) -> _Reid:
        """Embedder and worker, created the first time a scenario enables ReID (loading the model costs
        time and memory a tracker without ReID should not pay)."""
        if self._reid is None:
            s = self.settings.reid
            embedder = self._embedder or make_embedder(s.embedder, s.model_path, threads=s.threads)
            _log.info("ReID embedder ready", embedder=embedder.name)
            self._reid = _Reid(embedder, cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vap-reid"))
        return self._reid

    def _gallery(self, site: str) -> SiteGallery:
        state = self._reid_state()
        gallery = state.galleries.get(site)
        if gallery is None:
            s = self.settings.reid
            threshold = (
                s.match_threshold if s.match_threshold is not None else state.embedder.default_threshold
            )
            gallery = state.galleries[site] = SiteGallery(site, threshold=threshold, ttl_s=s.gallery_ttl_s)
        return gallery

    def _observe(self, channel: str, pipe: ChannelPipeline, result: PipelineOutput) -> None:
        metrics.FRAMES.labels(channel).inc()
        metrics.TRACK_SECONDS.observe(result.tracked.tracking_us / 1e6)
        live = sum(1 for t in result.tracked.tracks if t.state != tracking_pb2.TRACK_STATE_REMOVED)
        metrics.LIVE_TRACKS.labels(channel).set(live)
        if pipe.reid is not None:
            delta = pipe.reid.take_stats()
            metrics.REID_CROPS.labels("embedded").inc(delta.crops_embedded)
            metrics.REID_CROPS.labels("stale").inc(delta.crops_stale)
            metrics.REID_CROPS.labels("skipped_busy").inc(delta.batches_skipped_busy)
            metrics.REATTACHED.labels(channel).inc(delta.reattached)
        if pipe.attributes is not None:
            a = pipe.attributes.take_stats()
            metrics.ATTRIBUTE_CROPS.labels("classified").inc(a.crops_classified)
            metrics.ATTRIBUTE_CROPS.labels("stale").inc(a.crops_stale)
            metrics.ATTRIBUTE_CROPS.labels("no_face").inc(a.crops_without_face)
            metrics.ATTRIBUTE_CROPS.labels("skipped_busy").inc(a.batches_skipped_busy)
        for event in result.events:
            metrics.EVENTS.labels(channel, event.WhichOneof("kind") or "").inc()

    def _frame_out(self, channel: str, result: PipelineOutput) -> Outgoing:
        out: Outgoing = [(subjects.tracks(channel), result.tracked.SerializeToString())]
        events_subject = subjects.events(channel)
        out += [(events_subject, e.SerializeToString()) for e in result.events]
        out += self._counts_out(channel, result.counts)
        return out

    @staticmethod
    def _counts_out(channel: str, counts: list[analytics_pb2.IntervalCounts]) -> Outgoing:
        subject = subjects.counts(channel)
        return [(subject, c.SerializeToString()) for c in counts]
