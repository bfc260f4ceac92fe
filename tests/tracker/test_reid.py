"""ReID as a user notices it: a person who was hidden and comes back where motion cannot find them keeps
their id; the same person on two cameras of a site gets one global id; the embedding budget holds and
tracking never waits for embeddings; crops come from the shared-memory ring and stale slots are refused."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from vap_common.paths import models_dir
from vap_proto.v1 import frame_pb2, tracking_pb2
from vap_shmring import ReaderPool, RingWriter
from vap_shmring.images import ArrayFrame, RingFrame
from vap_tracker.bytetrack import TrackerConfig
from vap_tracker.pipeline import ChannelPipeline, ReidResources
from vap_tracker.reid.embedder import MODEL_FILE, Embedder, HsvHistogramEmbedder, make_embedder
from vap_tracker.reid.frames import budgeted_crops
from vap_tracker.reid.gallery import SiteGallery
from vap_tracker.reid.manager import ReidConfig, ReidStats
from vap_tracker.testing import Walker, detections, line_path, render, scenario_config

RED_BLUE = {"shirt": (0, 0, 200), "trousers": (200, 0, 0)}
GREEN_GREY = {"shirt": (0, 200, 0), "trousers": (60, 60, 60)}


@pytest.fixture
def executor() -> Iterator[cf.ThreadPoolExecutor]:
    pool = cf.ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


def resources(
    executor: cf.Executor, embedder: Embedder | None = None, config: ReidConfig | None = None
) -> tuple[ReidResources, dict[str, SiteGallery]]:
    emb = embedder or HsvHistogramEmbedder()
    galleries: dict[str, SiteGallery] = {}

    def gallery_for(site: str) -> SiteGallery:
        return galleries.setdefault(site, SiteGallery(site, threshold=emb.default_threshold))

    return ReidResources(config or ReidConfig(), lambda: (emb, executor), gallery_for), galleries


# The tracker core's own appearance cue (vap_tracker.appearance, on by default) keeps A's id through the
# occlusion below by itself; these tests switch it off to exercise the ReID re-attachment path.
MOTION_ONLY = TrackerConfig(appearance_veto=0, appearance_weight=0, appearance_reattach=0)


def pipeline(
    channel: str, res: ReidResources | None, site: str = "store-1", base: TrackerConfig = MOTION_ONLY
) -> ChannelPipeline:
    pipe = ChannelPipeline("s-" + channel, channel, base, res)
    pipe.apply(scenario_config("s-" + channel, channel, 1, reid=res is not None, site=site))
    return pipe


def step(pipe: ChannelPipeline, frame: int, walkers: list[Walker]) -> tracking_pb2.TrackedFrame:
    out = pipe.process(
        detections(frame, walkers, pipe.channel_id, pipe.scenario_id), ArrayFrame(render(frame, walkers))
    )
    if pipe.reid is not None:
        pipe.reid.wait()  # results are then harvested with the next frame: deterministic for the test
    return out.tracked


def occlusion_scene() -> list[Walker]:
    # A walks right for 2 s, is hidden for 0.8 s, and comes back 100 px to the left, walking left: the
    # constant-velocity prediction is 180 px off to the right, so motion alone starts a new track.
    path = line_path((100, 300), (300, 300), 50) + line_path((300, 300), (210, 300), 20)
    path += line_path((200, 300), (120, 300), 40)
    a = Walker(path, hidden=set(range(50, 70)), **RED_BLUE)  # type: ignore[arg-type]
    b = Walker([(520.0, 320.0)] * len(path), **GREEN_GREY)  # type: ignore[arg-type]
    return [a, b]


def a_ids(
    walkers: list[Walker], pipe: ChannelPipeline, frames: range
) -> tuple[list[int], list[tracking_pb2.Track]]:
    """Ids of A's confirmed track per frame (A is the walker at x < 450), and every REMOVED track."""
    ids, removed = [], []
    for f in frames:
        tracked = step(pipe, f, walkers)
        removed += [t for t in tracked.tracks if t.state == tracking_pb2.TRACK_STATE_REMOVED]
        ids += [
            t.track_id
            for t in tracked.tracks
            if t.state == tracking_pb2.TRACK_STATE_CONFIRMED and t.frames_since_update == 0 and t.box.x2 < 450
        ]
    return ids, removed


def test_reid_reattaches_a_person_after_an_occlusion_gap(executor: cf.ThreadPoolExecutor) -> None:
    walkers = occlusion_scene()
    res, _ = resources(executor)
    ids, removed = a_ids(walkers, pipeline("cam1", res), range(110))
    before, after = ids[:45], ids[-30:]
    assert set(before) == {1}
    assert set(after) == {1}, "A must be back under its first id"
    merged = [t for t in removed if t.merged_into_track_id == 1]
    assert len(merged) == 1 and merged[0].track_id > 2  # the young track, ended by the re-attachment


def test_without_reid_the_same_scene_gives_a_new_id(executor: cf.ThreadPoolExecutor) -> None:
    walkers = occlusion_scene()
    ids, _ = a_ids(walkers, pipeline("cam1", None), range(110))
    assert ids[0] == 1 and ids[-1] != 1


def test_the_trackers_appearance_cue_keeps_the_id_through_the_same_occlusion() -> None:
    """Without ReID, with the default tracker: the colours of A's crops (rendered pixels, through the same
    FrameImage path as the ring) bring A back under its first id, with no young track to merge."""
    walkers = occlusion_scene()
    ids, removed = a_ids(walkers, pipeline("cam1", None, base=TrackerConfig()), range(110))
    assert set(ids[:45]) == {1} and set(ids[-30:]) == {1}
    assert not [t for t in removed if t.merged_into_track_id]


def test_one_global_id_for_one_person_across_two_cameras_of_a_site(executor: cf.ThreadPoolExecutor) -> None:
    res, galleries = resources(executor)
    cam1, cam2 = pipeline("cam1", res), pipeline("cam2", res)
    other_site = pipeline("cam3", res, site="store-2")
    x1 = Walker(line_path((100, 300), (400, 300), 40), **RED_BLUE)  # type: ignore[arg-type]
    x2 = Walker(line_path((500, 350), (200, 350), 40), **RED_BLUE)  # type: ignore[arg-type]
    y2 = Walker(line_path((100, 250), (300, 250), 40), **GREEN_GREY)  # type: ignore[arg-type]
    x3 = Walker(line_path((100, 300), (400, 300), 40), **RED_BLUE)  # type: ignore[arg-type]

    def global_ids(pipe: ChannelPipeline, walkers: list[Walker]) -> dict[int, int]:
        last: dict[int, int] = {}
        for f in range(40):
            for t in step(pipe, f, walkers).tracks:
                if t.global_id:
                    last[round(t.box.y2)] = t.global_id
        return last

    on_cam1 = global_ids(cam1, [x1])  # first camera: X gets identity 1
    on_cam2 = global_ids(cam2, [x2, y2])  # later the second camera sees X again, and Y
    on_cam3 = global_ids(other_site, [x3])  # another site never shares identities
    (gid_x,) = set(on_cam1.values())
    assert on_cam2[350] == gid_x
    assert on_cam2[250] != gid_x
    assert set(on_cam3.values()) == {1} and len(galleries["store-2"]) == 1
    assert len(galleries["store-1"]) == 2


class SlowEmbedder(HsvHistogramEmbedder):
    """Takes 0.3 s per batch and records what it was given."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:  # type: ignore[override]
        with self._lock:
            self.batches.append(len(crops))
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        time.sleep(0.3)
        with self._lock:
            self.running -= 1
        return super().embed(crops)


def test_embedding_budget_holds_and_tracking_never_waits() -> None:
    slow = SlowEmbedder()
    pool = cf.ThreadPoolExecutor(max_workers=1)
    try:
        res, _ = resources(pool, slow, ReidConfig(max_crops_per_frame=3, max_in_flight=1))
        pipe = pipeline("cam1", res)
        crowd = [Walker([(40.0 + 70 * k, 300.0 + 5 * k)] * 40, shirt=(20 * k, 0, 200)) for k in range(8)]
        slowest = 0.0
        for f in range(40):
            start = time.perf_counter()
            pipe.process(detections(f, crowd, "cam1", "s-cam1"), ArrayFrame(render(f, crowd)))
            slowest = max(slowest, time.perf_counter() - start)
            assert pipe.reid is not None
            assert len(pipe.reid._inflight) <= 1
        assert slowest < 0.1, f"a frame waited {slowest:.3f} s for embeddings"
        assert slow.batches and max(slow.batches) <= 3
        assert pipe.reid is not None and pipe.reid.stats.batches_skipped_busy > 0
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def test_crops_come_from_the_ring_and_stale_slots_are_refused() -> None:
    walkers = occlusion_scene()
    bgr = render(0, walkers)
    channel = f"reid-test-{time.monotonic_ns()}"
    writer = RingWriter.create(
        channel, width=640, height=480, pixel_format=frame_pb2.PIXEL_FORMAT_I420, slots=2
    )
    pool = ReaderPool()
    try:
        ref = writer.write(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420), sequence=0)
        boxes = np.array([w.box(0) for w in walkers])
        crops = RingFrame(pool, ref).crops(boxes)
        assert crops is not None
        for crop, expected in zip(crops, ArrayFrame(bgr).crops(boxes) or [], strict=True):
            assert crop.shape == expected.shape
            assert float(np.abs(crop.astype(int) - expected.astype(int)).mean()) < 8  # YUV 4:2:0 round trip
        # The source was 1280x960, the decoder stored 640x480: boxes in source pixels are scaled.
        scaled = frame_pb2.FrameRef()
        scaled.CopyFrom(ref)
        scaled.source_width, scaled.source_height = 1280, 960
        crops2 = RingFrame(pool, scaled).crops(boxes * 2)
        assert crops2 is not None and crops2[0].shape == crops[0].shape
        for k in range(2):  # the writer wraps around and overwrites the slot
            writer.write(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420), sequence=k + 1)
        assert RingFrame(pool, ref).crops(boxes) is None
        # The per-frame budget (ReID and attributes): a stale frame costs nothing but a count.
        stats = ReidStats()
        candidates = [(0.0, 0, 10), (1.0, 1, 11)]
        assert (
            budgeted_crops(candidates, boxes, RingFrame(pool, ref), max_crops=2, busy=False, stats=stats)
            is None
        )
        assert (stats.crops_stale, stats.batches_skipped_busy) == (2, 0)
    finally:
        pool.close()
        writer.close()


def test_crop_budget_takes_the_neediest_and_nothing_while_busy() -> None:
    bgr = np.zeros((100, 200, 3), np.uint8)
    boxes = np.array([[0, 0, 10, 20], [10, 0, 30, 20], [50, 0, 90, 20]], dtype=np.float64)
    stats = ReidStats()
    candidates = [(5.0, 0, 30), (float("-inf"), 2, 32), (1.0, 1, 31)]
    picked = budgeted_crops(candidates, boxes, ArrayFrame(bgr), max_crops=2, busy=False, stats=stats)
    assert picked is not None
    ids, crops = picked
    assert ids == [32, 31] and [c.shape[1] for c in crops] == [40, 20]
    assert budgeted_crops(candidates, boxes, ArrayFrame(bgr), max_crops=2, busy=True, stats=stats) is None
    assert budgeted_crops([], boxes, ArrayFrame(bgr), max_crops=2, busy=True, stats=stats) is None
    assert (stats.batches_skipped_busy, stats.crops_stale) == (1, 0)


@pytest.mark.skipif(
    not (models_dir() / MODEL_FILE).is_file(),
    reason=f"{MODEL_FILE} not in models_dir() ({models_dir()}); set VAP_MODELS_DIR to ../shared/models",
)
def test_onnx_embeddings_recognise_people_in_the_scene() -> None:
    walkers = [
        Walker([(200.0, 300.0)] * 5, **RED_BLUE),  # type: ignore[arg-type]
        Walker([(400.0, 300.0)] * 5, **GREEN_GREY),  # type: ignore[arg-type]
        Walker([(300.0, 300.0)] * 5, shirt=(0, 0, 180), trousers=(60, 60, 60)),
    ]
    boxes = np.array([w.box(0) for w in walkers])
    first = ArrayFrame(render(0, walkers)).crops(boxes)
    later = ArrayFrame(render(3, walkers)).crops(boxes + np.array([3, -2, 3, -2]))
    assert first is not None and later is not None
    for kind in ("onnx", "auto"):
        emb = make_embedder(kind)
        a, b = emb.embed(first), emb.embed(later)
        assert a.shape == (3, emb.dim) and a.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(emb.embed(first[:1])[0], a[0], atol=1e-5)  # batching changes nothing
        sim = a @ b.T
        assert (sim.argmax(axis=1) == np.arange(3)).all(), sim
    fused = make_embedder("auto")
    sim = fused.embed(first) @ fused.embed(later).T
    assert sim.diagonal().min() >= fused.default_threshold > (sim - np.eye(3) * 10).max()


def test_gallery_identities_expire_and_one_view_never_shows_one_identity_twice() -> None:
    gallery = SiteGallery("site", threshold=0.8, ttl_s=60.0)
    x = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    look_alike = np.array([0.9, 0.436, 0.0], dtype=np.float32)  # cosine 0.9 with x
    x_again = np.array([0.995, 0.0998, 0.0], dtype=np.float32)  # x, seen by another camera
    gid = gallery.assign("cam1", 1, x, now_s=0.0)
    # Another live track of the same camera that looks alike is someone else (two people, one view).
    assert gallery.assign("cam1", 2, look_alike, now_s=1.0) != gid
    # On another camera, the look-alike is the same identity.
    assert gallery.assign("cam2", 7, x_again, now_s=2.0) == gid
    for channel, track, g in (("cam1", 1, gid), ("cam2", 7, gid)):
        gallery.release(channel, track, g)
    gallery.release("cam1", 2, 2)
    # Nobody wears them any more; after the TTL they are gone and the look is a new identity.
    assert gallery.assign("cam3", 1, x, now_s=2.0 + 61.0) not in (gid, 2)
    assert len(gallery) == 1
