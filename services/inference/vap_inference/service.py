"""The bus side of the inference service: FrameRefs in, FrameDetections out.

    vap.frames.*            FrameRef        -> one AsyncBatcher per model (freshest frame per channel);
                                               vap.frames.*.<node> with settings.node_id (multi-node)
    vap.scenario.*.config   ScenarioConfig  -> per-scenario model, threshold, class filter, NMS IoU
    vap.detections.<ch>     FrameDetections <- published per inferred frame

Threads: the NATS handlers run inline on the event loop (vap_framebus) and only parse and enqueue. Each
model has one worker task that awaits a batch and runs it in a worker thread (preprocess from the ring,
inference, postprocess: ONNX Runtime and OpenCV release the GIL), so the loop keeps receiving while a
batch runs; frames that arrive meanwhile replace older ones of their channel in the batcher.

Ring reads follow vap_shmring's protocol: view, build the model input, check the generation (a torn read is
dropped before inference), and check once more after inference: results of a slot overwritten by then are
dropped too, since downstream consumers read the slot's pixels through FrameDetections.frame_ref.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from vap_common import subjects
from vap_common.logs import get_logger
from vap_common.nats_auth import NatsAuth
from vap_common.scenario_configs import (
    ConfigRevisions,
    fetch_latest_scenario_configs_from,
    follow_scenario_configs,
)
from vap_common.tasks import cancel_all
from vap_framebus import AsyncFrameSubscriber
from vap_inference import metrics
from vap_inference.backends.base import BackendError
from vap_inference.batcher import AsyncBatcher, Pending
from vap_inference.detector import Detector, FrameOptions
from vap_inference.errors import InferenceError, UnknownModelError
from vap_inference.manager import ModelManager
from vap_inference.preprocess import Letterbox
from vap_inference.settings import InferenceSettings
from vap_models import ModelVerificationError
from vap_proto.v1 import detection_pb2, frame_pb2, scenario_pb2
from vap_shmring import ReaderPool, ShmRingError, StaleGenerationError

_log = get_logger("vap.inference.service")

RELOAD_AFTER_S = 30.0


def _us(ns: int) -> int:
    return max(0, ns // 1000)


def _fail(done: asyncio.Future[None], exc: BaseException) -> None:
    if not done.done():
        done.set_exception(exc)


@dataclass
class _ScenarioState:
    revision: int
    pipeline: scenario_pb2.PipelineSettings
    options: dict[str, FrameOptions] = field(default_factory=dict)  # per model name


class InferenceService:
    def __init__(self, settings: InferenceSettings, manager: ModelManager) -> None:
        self.settings = settings
        self.manager = manager
        # Plain counters for tests and logs; the Prometheus metrics carry the same per model.
        self.counters: Counter[str] = Counter()
        self._bus = AsyncFrameSubscriber()
        self._scenarios: dict[str, _ScenarioState] = {}
        self._revisions = ConfigRevisions()
        self._batchers: dict[str, AsyncBatcher[frame_pb2.FrameRef]] = {}
        # Per model, one worker task per lane (settings.parallel_batches), all taking from its batcher.
        self._workers: dict[str, list[asyncio.Task[None]]] = {}
        # One thread per worker (plus loads): batches of different models, and lanes of one model, run side
        # by side.
        self._executor = ThreadPoolExecutor(
            max_workers=max(4, settings.parallel_batches + 2), thread_name_prefix="vap-inference"
        )
        self._closing = False
        self._subjects: dict[str, str] = {}  # channel id -> detections subject

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def start(self, nats_url: str, *, auth: NatsAuth | None = None) -> None:
        """Connect to NATS at ``nats_url`` as ``auth`` (default: the URL's user info) and subscribe."""
        loop = asyncio.get_running_loop()
        # Load the default model before subscribing: a missing or broken model fails the start loudly.
        await loop.run_in_executor(self._executor, self.manager.get, self.manager.default_name)
        for name in self.settings.preload:
            await loop.run_in_executor(self._executor, self.manager.get, name)
        await self._bus.connect(nats_url, name="vap-inference", auth=auth)
        stored = await follow_scenario_configs(
            self._bus.subscribe,
            lambda: fetch_latest_scenario_configs_from(nats_url, auth=auth),
            self._on_config,
        )
        frames = subjects.all_frames(self.settings.node_id)
        await self._bus.subscribe(frames, self._on_frame, queue=self.settings.queue_group)
        _log.info(
            "inference service subscribed",
            frames=frames,
            model=self.manager.default_name,
            stored_configs=stored,
        )

    async def stop(self) -> None:
        self._closing = True
        await self._bus.close()
        await cancel_all(task for lanes in self._workers.values() for task in lanes)
        self._workers.clear()
        self._executor.shutdown(wait=True)

    # --- bus handlers (inline on the receive path: parse, enqueue, return) ----------------------------------

    def _on_frame(self, subject: str, payload: bytes) -> None:
        try:
            ref = frame_pb2.FrameRef.FromString(payload)
        except DecodeError:
            # Not a FrameRef (a foreign or forged publisher): counted, never a traceback per message.
            self._drop("", "malformed")
            return
        model = self._model_for(ref.scenario_id)
        if model is None:
            self.counters["unknown_model"] += 1
            return
        batcher = self._batchers.get(model)
        if batcher is None:  # not `or`: an empty batcher is falsy (it has __len__)
            batcher = self._start_worker(model)
        m = metrics.for_model(model)
        self.counters["received"] += 1
        m.received.inc()
        if batcher.add(ref.channel_id, ref, capture_wall_ns=ref.capture_time_ns):
            self.counters["superseded"] += 1
            m.dropped("superseded").inc()
        m.queue_depth.set(len(batcher))

    def _on_config(self, subject: str, payload: bytes) -> None:
        config = self._revisions.newer(payload)
        if config is None:
            return  # undecodable, or an older or repeated revision
        if not config.active:
            self._scenarios.pop(config.scenario_id, None)
            return
        self._scenarios[config.scenario_id] = _ScenarioState(config.revision, config.pipeline)
        self.counters["configs"] += 1

    def _model_for(self, scenario_id: str) -> str | None:
        state = self._scenarios.get(scenario_id) if scenario_id else None
        try:
            return self.manager.resolve(state.pipeline.model if state is not None else "")
        except UnknownModelError:
            return None

    def options_for(self, detector: Detector, scenario_id: str) -> FrameOptions:
        state = self._scenarios.get(scenario_id) if scenario_id else None
        if state is None:
            return detector.default_options()
        opts = state.options.get(detector.name)
        if opts is None:
            p = state.pipeline
            opts = state.options[detector.name] = detector.options(
                confidence=p.confidence_threshold if p.HasField("confidence_threshold") else None,
                nms_iou=p.nms_iou_threshold if p.HasField("nms_iou_threshold") else None,
                class_ids=list(p.class_ids),
                class_names=list(p.class_names),
                max_detections=self.settings.max_detections,
            )
        return opts

    # --- workers ------------------------------------------------------------------------------------------

    def _start_worker(self, model: str) -> AsyncBatcher[frame_pb2.FrameRef]:
        s = self.settings
        loaded = self.manager.loaded(model)
        batcher: AsyncBatcher[frame_pb2.FrameRef] = AsyncBatcher(
            max_batch=min(s.max_batch, loaded.max_batch) if loaded else 1,
            max_wait_ms=s.max_wait_ms,
            stale_after_ms=s.stale_after_ms,
        )
        self._batchers[model] = batcher
        loop = asyncio.get_running_loop()
        self._workers[model] = [
            loop.create_task(self._worker(model, batcher, lane)) for lane in range(s.parallel_batches)
        ]
        return batcher

    def batcher(self, model: str) -> AsyncBatcher[frame_pb2.FrameRef] | None:
        return self._batchers.get(model)

    async def _worker(self, model: str, batcher: AsyncBatcher[frame_pb2.FrameRef], lane: int = 0) -> None:
        loop = asyncio.get_running_loop()
        pool = ReaderPool()  # one per worker thread's use: attaching is not thread-safe
        detector: Detector | None = None
        m = metrics.for_model(model)
        next_load = 0.0
        try:
            while not self._closing:
                if detector is None and time.monotonic() >= next_load:
                    try:
                        detector = await loop.run_in_executor(self._executor, self.manager.get, model)
                        if lane:
                            detector = detector.lane()
                        batcher.max_batch = min(self.settings.max_batch, detector.max_batch)
                    except (InferenceError, ModelVerificationError, BackendError) as exc:
                        _log.error("model unavailable", model=model, error=str(exc))
                        next_load = time.monotonic() + RELOAD_AFTER_S
                batch, stale = await batcher.next_batch()
                m.queue_depth.set(len(batcher))
                if stale:
                    self._drop(model, "stale", len(stale))
                if not batch:
                    continue
                if detector is None:
                    self._drop(model, "model_unavailable", len(batch))
                    continue
                start = time.monotonic_ns()
                done: asyncio.Future[None] = loop.create_future()
                self._executor.submit(self._run_batch, loop, done, m, detector, pool, batch, start)
                await done
        finally:
            pool.close()

    def _run_batch(
        self,
        loop: asyncio.AbstractEventLoop,
        done: asyncio.Future[None],
        m: metrics.ModelMetrics,
        detector: Detector,
        pool: ReaderPool,
        batch: list[Pending[frame_pb2.FrameRef]],
        start_ns: int,
    ) -> None:
        """process_batch in a worker thread, then one hop to the loop that publishes the results there and
        then. (run_in_executor would take two: its future's state is copied over by one callback, which
        then schedules the waiting task, and only that task step would publish.)"""
        try:
            messages = self.process_batch(detector, pool, batch, start_ns)
        except BaseException as exc:
            loop.call_soon_threadsafe(_fail, done, exc)
            raise
        loop.call_soon_threadsafe(self._publish, done, m, messages)

    def _publish(
        self,
        done: asyncio.Future[None],
        m: metrics.ModelMetrics,
        messages: list[tuple[str, detection_pb2.FrameDetections]],
    ) -> None:
        try:
            for subject, message in messages:
                message.publish_time_ns = time.time_ns()
                self._bus.publish(subject, message.SerializeToString())
        except Exception as exc:  # the lane awaiting `done` raises it, as it did when it published itself
            _fail(done, exc)
            return
        self.counters["published"] += len(messages)
        m.published.inc(len(messages))
        if not done.done():
            done.set_result(None)

    def _drop(self, model: str, reason: str, count: int = 1) -> None:
        self.counters[reason] += count
        metrics.for_model(model).dropped(reason).inc(count)

    def _subject(self, channel_id: str) -> str:
        # Escaping the channel id into a subject token is per character in Python: once per channel.
        subject = self._subjects.get(channel_id)
        if subject is None:
            if len(self._subjects) >= 4096:  # channels come and go; keep the cache bounded
                self._subjects.clear()
            subject = self._subjects[channel_id] = subjects.detections(channel_id)
        return subject

    def process_batch(
        self,
        detector: Detector,
        pool: ReaderPool,
        batch: list[Pending[frame_pb2.FrameRef]],
        start_ns: int,
    ) -> list[tuple[str, detection_pb2.FrameDetections]]:
        """Preprocess from the rings, infer, postprocess (worker thread). Returns (subject, message) pairs;
        publish_time_ns is set by the caller right before publishing."""
        model = detector.name
        m = metrics.for_model(model)
        prepared: list[tuple[Pending[frame_pb2.FrameRef], Letterbox, int]] = []
        out: list[tuple[str, detection_pb2.FrameDetections]] = []
        with detector.lock:
            for entry in batch:
                ref = entry.item
                t0 = time.perf_counter_ns()
                try:
                    view = pool.view(ref)
                    lb = detector.preprocessor.from_planes(
                        len(prepared), view.planes, ref.pixel_format, ref.width, ref.height
                    )
                    del view
                    pool.check(ref)  # the pixels were used for the last time above
                except StaleGenerationError:
                    self._drop(model, "overwritten")
                    continue
                except (ShmRingError, ValueError) as exc:
                    self._drop(model, "error")
                    _log.warning("cannot read frame", channel=ref.channel_id, ring=ref.ring, error=str(exc))
                    continue
                prepared.append((entry, lb, (time.perf_counter_ns() - t0) // 1000))
            if not prepared:
                return out
            n = len(prepared)
            t0 = time.perf_counter_ns()
            try:
                outputs = detector.run(n)
            except BackendError as exc:
                self._drop(model, "error", n)
                _log.error("inference failed", model=model, batch=n, error=str(exc))
                return out
            infer_us = (time.perf_counter_ns() - t0) // 1000
            m.batch_size.observe(n)
            m.stages["inference"].observe(infer_us / 1e6)
            for index, (entry, lb, pre_us) in enumerate(prepared):
                ref = entry.item
                t0 = time.perf_counter_ns()
                try:
                    pool.check(ref)  # overwritten during inference: consumers could not read its pixels
                except StaleGenerationError:
                    self._drop(model, "overwritten")
                    continue
                dets = detector.postprocess(
                    outputs,
                    index,
                    lb,
                    self.options_for(detector, ref.scenario_id),
                    ref.source_width,
                    ref.source_height,
                )
                msg = detection_pb2.FrameDetections(
                    frame=frame_pb2.FrameInfo(
                        channel_id=ref.channel_id,
                        scenario_id=ref.scenario_id,
                        sequence=ref.sequence,
                        stream_epoch=ref.stream_epoch,
                        capture_time_ns=ref.capture_time_ns,
                        pts_us=ref.pts_us,
                        width=ref.source_width or ref.width,
                        height=ref.source_height or ref.height,
                    ),
                    detections=detector.to_proto(dets),
                    frame_ref=ref,
                )
                post_us = (time.perf_counter_ns() - t0) // 1000
                wait_us = _us(start_ns - entry.arrival_ns)
                stats = msg.stats  # filled in place: a separate InferenceStats would be built, then copied
                stats.model_name = model
                stats.batch_size = n
                stats.queue_wait_us = wait_us
                stats.preprocess_us = pre_us
                stats.inference_us = infer_us
                stats.postprocess_us = post_us
                stats.backend = detector.backend.backend_kind
                m.stages["queue_wait"].observe(wait_us / 1e6)
                m.stages["preprocess"].observe(pre_us / 1e6)
                m.stages["postprocess"].observe(post_us / 1e6)
                out.append((self._subject(ref.channel_id), msg))
        return out
