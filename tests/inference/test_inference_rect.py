"""Rectangular inputs (InferenceSettings.rect_input): NanoDet on ONNX Runtime runs a 16:9 frame at 416x256
instead of 416x416. The input is the square input without its padding rows; the people found are the same;
a runtime that cannot take the smaller size falls back to the square input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vap_inference.backends.base import BackendError
from vap_inference.backends.onnxruntime import OrtBackend, with_free_spatial_dims
from vap_inference.decoders import nanodet
from vap_inference.detector import Detections, Detector
from vap_inference.manager import ModelManager
from vap_inference.preprocess import InputFormat, Layout, Preprocessor, input_size, plan_letterbox
from vap_inference.settings import InferenceSettings
from vap_inference.testing import bgr_to_planes, video_frames
from vap_modelbuild.derive import iou_matrix
from vap_models.catalogue import NANODET_INT8
from vap_proto.v1.frame_pb2 import PixelFormat

I420 = PixelFormat.PIXEL_FORMAT_I420
SQUARE = nanodet.input_format(416, 416)
RECT = nanodet.input_format(416, 416, stride=32)


def _image(w: int, h: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("w", "h", "size"),
    [(1280, 720, (416, 256)), (1920, 1080, (416, 256)), (768, 576, (416, 320)), (720, 1280, (256, 416))],
    ids=["720p", "1080p", "4:3", "portrait"],
)
def test_sizes_follow_the_aspect_ratio(w: int, h: int, size: tuple[int, int]) -> None:
    pre = Preprocessor(RECT, 1)
    pre.from_planes(0, tuple(bgr_to_planes(_image(w, h), I420)), I420, w, h)
    assert pre.size == size
    assert pre.inputs(1).shape == (1, 3, size[1], size[0]) and pre.inputs(1).flags.c_contiguous


@settings(max_examples=40, deadline=None)
@given(st.integers(32, 2000), st.integers(32, 2000))
def test_rect_input_is_the_square_input_without_its_padding(w: int, h: int) -> None:
    """Same scale, same pixels: the rectangular input equals the top-left corner of the square one."""
    image = _image(w, h, seed=w * 7919 + h)
    square, rect = Preprocessor(SQUARE, 1), Preprocessor(RECT, 1)
    lb_square = square.from_bgr(0, image)
    lb_rect = rect.from_bgr(0, image)
    assert lb_rect == lb_square
    rw, rh = rect.size
    assert rw % 32 == 0 and rh % 32 == 0 and rw <= 416 and rh <= 416
    assert rw >= lb_rect.scaled_width and rh >= lb_rect.scaled_height
    np.testing.assert_array_equal(rect.inputs(1)[0], square.inputs(1)[0][:, :rh, :rw])


def test_later_frames_of_a_batch_fit_its_size() -> None:
    """A batch has one input size, its first frame's; a 4:3 frame after a 16:9 one is letterboxed into it
    and its boxes still map back to its own pixels."""
    pre = Preprocessor(RECT, 2)
    pre.from_bgr(0, _image(1280, 720))
    lb = pre.from_bgr(1, _image(768, 576))
    assert pre.size == (416, 256)
    assert lb.scaled_height <= 256 and lb.scaled_width <= 416
    assert pre.inputs(2).shape == (2, 3, 256, 416)
    whole = np.array([[0, 0, lb.scaled_width, lb.scaled_height]], np.float32)
    np.testing.assert_allclose(lb.to_source(whole), [[0, 0, 768, 576]], atol=1.0)
    # A new batch starts at index 0 and takes that frame's size.
    pre.from_bgr(0, _image(768, 576))
    assert pre.size == (416, 320)


def test_input_size_of_a_fixed_format_is_the_whole_input() -> None:
    assert input_size(plan_letterbox(1280, 720, SQUARE), SQUARE) == (416, 416)
    with pytest.raises(ValueError, match="rectangular"):
        InputFormat(416, 416, Layout.NCHW_FLOAT, rgb=False, center=True, stride=32)
    with pytest.raises(ValueError, match="rectangular"):
        InputFormat(300, 300, Layout.NHWC_UINT8, rgb=True, stride=32)


def test_free_spatial_dims_of_the_int8_model(nanodet_int8_path: Path) -> None:
    backend = OrtBackend(nanodet_int8_path, threads=1, flexible_input=True)
    assert backend.inputs[0].fixed(1) == 3 and backend.inputs[0].fixed(2) is None
    assert backend.inputs[0].fixed(3) is None
    outputs = backend.run({backend.inputs[0].name: np.zeros((1, 3, 256, 416), np.float32)})
    assert sorted(o.shape[1] for o in outputs) == [104, 104, 416, 416, 1664, 1664]  # 13x8, 26x16, 52x32
    assert b"height" in with_free_spatial_dims(nanodet_int8_path)


def _people(dets: Detections) -> np.ndarray:
    return dets.boxes[dets.class_ids == 0]


@pytest.mark.parametrize(
    ("width", "size"),
    [(1280, (416, 256)), (540, (320, 416))],
    ids=["16:9 at 416x256", "3:4 crop at 320x416"],
)
def test_the_same_people_on_real_720p_frames(
    nanodet_int8_path: Path, width: int, size: tuple[int, int]
) -> None:
    """NanoDet-int8 on vtest-720p25 frames (whole, and their left 540 columns: narrower than high, so the
    grids change in both directions), square against rectangular input: every person found one way is
    found the other way at nearly the same box, and the rectangular run really used the smaller size."""
    square = Detector(NANODET_INT8, OrtBackend(nanodet_int8_path, threads=2), max_batch=1).load()
    rect = Detector(
        NANODET_INT8, OrtBackend(nanodet_int8_path, threads=2, flexible_input=True), max_batch=1
    ).load()
    assert square.input_format.stride == 0 and rect.input_format.stride == 32
    frames = video_frames((0, 100, 200, 400, 600), "vtest-720p25.mp4")
    people = 0
    for index, whole in frames.items():
        frame = np.ascontiguousarray(whole[:, :width])
        a, _ = square.detect_image(frame)
        b, _ = rect.detect_image(frame)
        assert rect.preprocessor.size == size
        pa, pb = _people(a), _people(b)
        assert abs(len(pa) - len(pb)) <= 1, f"frame {index}: {len(pa)} people square, {len(pb)} rectangular"
        if len(pa) and len(pb):
            matched = iou_matrix(pa, pb).max(axis=1) > 0.85
            assert matched.sum() >= len(pa) - 1, f"frame {index}: {matched.sum()} of {len(pa)} matched"
        people += len(pa)
    assert people >= 5  # the frames do have people in them (whole frames: 3-8 each)


class _SquareOnly:
    """A runtime that takes the full square input only (as a pinned TensorRT engine does), around the real
    ONNX Runtime backend."""

    def __init__(self, inner: OrtBackend) -> None:
        self._inner = inner
        self.backend_kind, self.precision = inner.backend_kind, inner.precision
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.concurrent_runs, self.max_batch = True, 1

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        (tensor,) = feed.values()
        if tensor.shape[2:] != (416, 416):
            raise BackendError(f"input {tensor.shape} refused: this runtime takes 416x416 only")
        return self._inner.run(feed)

    def close(self) -> None:
        self._inner.close()


def test_a_runtime_refusing_the_smaller_size_gets_the_square(nanodet_int8_path: Path) -> None:
    backend = _SquareOnly(OrtBackend(nanodet_int8_path, threads=2, flexible_input=True))
    detector = Detector(NANODET_INT8, backend, max_batch=1).load()  # type: ignore[arg-type]
    assert detector.input_format.stride == 0
    dets, _ = detector.detect_image(video_frames((200,), "vtest-720p25.mp4")[200])
    assert detector.preprocessor.size == (416, 416) and len(_people(dets)) >= 3


def test_the_service_default_and_the_switch(models_dir: Path) -> None:
    on = ModelManager(InferenceSettings.load(None, models_dir=models_dir, backend="onnxruntime"))
    off = ModelManager(
        InferenceSettings.load(None, models_dir=models_dir, backend="onnxruntime", rect_input=False)
    )
    try:
        assert on.get(NANODET_INT8.name).input_format.stride == 32
        assert off.get(NANODET_INT8.name).input_format.stride == 0
        assert on.get("ssdlite-mbv2-person-300").input_format.stride == 0  # stretches to 300x300 anyway
    finally:
        on.close()
        off.close()
