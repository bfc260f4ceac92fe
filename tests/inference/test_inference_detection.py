"""Detection quality on known frames (the shipped models, ONNX Runtime on the CPU) and the end-to-end
geometry: boxes come back in original-frame pixels whatever the ring's pixel format and size."""

from __future__ import annotations

import numpy as np
import pytest

from vap_inference.detector import Detector
from vap_inference.testing import bgr_to_planes
from vap_proto.v1.frame_pb2 import PixelFormat

PERSON = 0


def people(detector: Detector, image: np.ndarray) -> int:
    dets, _ = detector.detect_image(image)
    return int((dets.class_ids == PERSON).sum())


def test_nanodet_finds_people_on_vtest_frame_200(nanodet: Detector, frames: dict[int, np.ndarray]) -> None:
    # README: 8 people on frame 200 at score 0.4 + NMS 0.5; the issue asks for at least 4.
    assert people(nanodet, frames[200]) >= 4
    assert people(nanodet, frames[0]) >= 2


def test_nanodet_finds_nothing_on_blank_frames(nanodet: Detector) -> None:
    for value in (0, 128, 255):
        dets, _ = nanodet.detect_image(np.full((576, 768, 3), value, np.uint8))
        assert len(dets) == 0, f"detections on a blank frame of value {value}: {dets}"


def test_ssdlite_finds_people_and_nothing_on_blank(ssdlite: Detector, frames: dict[int, np.ndarray]) -> None:
    assert people(ssdlite, frames[200]) >= 3
    dets, _ = ssdlite.detect_image(np.full((576, 768, 3), 128, np.uint8))
    assert len(dets) == 0


def test_boxes_are_in_frame_pixels_and_sorted(nanodet: Detector, frames: dict[int, np.ndarray]) -> None:
    dets, timings = nanodet.detect_image(frames[200])
    assert np.all(dets.boxes[:, 0] >= 0) and np.all(dets.boxes[:, 2] <= 768)
    assert np.all(dets.boxes[:, 1] >= 0) and np.all(dets.boxes[:, 3] <= 576)
    assert np.all(dets.boxes[:, 2] > dets.boxes[:, 0]) and np.all(dets.boxes[:, 3] > dets.boxes[:, 1])
    assert list(dets.scores) == sorted(dets.scores, reverse=True)
    # People in vtest are upright: boxes taller than wide.
    persons = dets.boxes[dets.class_ids == PERSON]
    assert np.median((persons[:, 3] - persons[:, 1]) / (persons[:, 2] - persons[:, 0])) > 1.2
    assert timings.inference_us > 0 and timings.preprocess_us > 0


def test_class_filter_and_threshold(nanodet: Detector, frames: dict[int, np.ndarray]) -> None:
    only_cars, _ = nanodet.detect_image(frames[200], nanodet.options(class_names=["car"]))
    assert PERSON not in set(only_cars.class_ids.tolist())
    by_id, _ = nanodet.detect_image(frames[200], nanodet.options(class_ids=[PERSON]))
    assert len(by_id) >= 4 and set(by_id.class_ids.tolist()) == {PERSON}
    strict, _ = nanodet.detect_image(frames[200], nanodet.options(confidence=0.99))
    assert len(strict) == 0
    unknown_only, _ = nanodet.detect_image(frames[200], nanodet.options(class_names=["unicorn"]))
    assert len(unknown_only) == 0, "a filter naming only unknown classes keeps nothing"
    capped, _ = nanodet.detect_image(frames[200], nanodet.options(max_detections=2))
    assert len(capped) == 2


@pytest.mark.parametrize(
    "pixel_format",
    [PixelFormat.PIXEL_FORMAT_I420, PixelFormat.PIXEL_FORMAT_NV12, PixelFormat.PIXEL_FORMAT_RGB24],
    ids=["i420", "nv12", "rgb24"],
)
def test_ring_formats_and_decoder_resize_give_the_same_people(
    nanodet: Detector, frames: dict[int, np.ndarray], pixel_format: PixelFormat.ValueType
) -> None:
    """The frame as a decoder would store it (another pixel format, resized to 2/3 of the original size):
    the boxes come back in original-frame pixels, close to those from the original BGR frame."""
    import cv2

    original = frames[200]
    reference, _ = nanodet.detect_image(original, nanodet.options(class_ids=[PERSON]))
    small = cv2.resize(original, (512, 384), interpolation=cv2.INTER_AREA)
    with nanodet.lock:
        lb = nanodet.preprocessor.from_planes(
            0, tuple(bgr_to_planes(small, pixel_format)), pixel_format, 512, 384
        )
        outputs = nanodet.run(1)
        dets = nanodet.postprocess(outputs, 0, lb, nanodet.options(class_ids=[PERSON]), 768, 576)
    assert abs(len(dets) - len(reference)) <= 1

    # Every reference person has a match with IoU > 0.6 (except at most one, for the count difference).
    def iou(a: np.ndarray, b: np.ndarray) -> float:
        x1, y1 = max(a[0], b[0]), max(a[1], b[1])
        x2, y2 = min(a[2], b[2]), min(a[3], b[3])
        inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return float(inter / union)

    matched = sum(1 for r in reference.boxes if any(iou(r, d) > 0.6 for d in dets.boxes))
    assert matched >= len(reference) - 1


def test_detector_lanes_run_concurrently_without_mixing_frames(
    ssdlite: Detector, frames: dict[int, np.ndarray]
) -> None:
    """Lanes (settings.parallel_batches) share the ONNX Runtime session but not the input buffers: two
    threads detecting different frames at once get exactly what each frame gets alone."""
    import threading

    lane = ssdlite.lane()
    assert lane is not ssdlite and lane.backend is ssdlite.backend
    assert lane.preprocessor.batch is not ssdlite.preprocessor.batch and lane.lock is not ssdlite.lock
    images = {"people": frames[200], "blank": np.full_like(frames[200], 128), "other": frames[0]}
    alone = {k: ssdlite.detect_image(img)[0] for k, img in images.items()}
    mismatches: list[str] = []

    def detect_many(detector: Detector, order: list[str]) -> None:
        for _ in range(6):
            for key in order:
                dets = detector.detect_image(images[key])[0]
                if not np.array_equal(dets.boxes, alone[key].boxes):
                    mismatches.append(key)

    threads = [
        threading.Thread(target=detect_many, args=(ssdlite, ["people", "blank", "other"])),
        threading.Thread(target=detect_many, args=(lane, ["blank", "other", "people"])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not mismatches, f"results mixed between lanes: {mismatches}"
    assert len(alone["people"]) >= 3 and len(alone["blank"]) == 0
