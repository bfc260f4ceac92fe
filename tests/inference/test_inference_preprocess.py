"""Preprocessing from every ring pixel format: same image as converting the full frame would give, only
the downscaled image is converted (no full-size intermediate), letterbox geometry maps boxes back."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest

from vap_inference.decoders import nanodet, ssdlite, yolo
from vap_inference.preprocess import InputFormat, Layout, Preprocessor, plan_letterbox
from vap_inference.testing import bgr_to_planes
from vap_proto.v1.frame_pb2 import PixelFormat

FORMATS = [
    PixelFormat.PIXEL_FORMAT_BGR24,
    PixelFormat.PIXEL_FORMAT_RGB24,
    PixelFormat.PIXEL_FORMAT_I420,
    PixelFormat.PIXEL_FORMAT_NV12,
]
U8_FMT = InputFormat(416, 416, Layout.NHWC_UINT8, rgb=False, keep_ratio=True, center=True, pad_value=7)


def scene(h: int = 1080, w: int = 1920) -> np.ndarray:
    """Smooth content (gradients and big blocks), so that resampling differences stay small."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], axis=2).astype(np.uint8)
    img[h // 4 : h // 2, w // 4 : w // 2] = (30, 200, 90)
    return img


@pytest.mark.parametrize("pixel_format", FORMATS, ids=["bgr", "rgb", "i420", "nv12"])
def test_every_format_gives_the_reference_letterbox(pixel_format: PixelFormat.ValueType) -> None:
    image = scene()
    pre = Preprocessor(U8_FMT, 1)
    lb = pre.from_planes(0, tuple(bgr_to_planes(image, pixel_format)), pixel_format, 1920, 1080)
    assert (lb.scaled_width, lb.scaled_height) == (416, 234)
    assert (lb.pad_x, lb.pad_y) == (0, 91)
    got = pre.batch[0].astype(np.int16)
    reference = cv2.resize(image, (416, 234), interpolation=cv2.INTER_AREA).astype(np.int16)
    inside = got[91 : 91 + 234]
    # 4:2:0 loses chroma resolution (and its YUV round trip costs a little): a few levels on average.
    assert np.abs(inside - reference).mean() < 4.0
    assert np.all(got[:91] == 7) and np.all(got[91 + 234 :] == 7), "padding must be the pad value"


def test_preprocessing_a_4k_i420_frame_allocates_no_full_size_image() -> None:
    """A 4K BGR conversion would be a 24 MB array; everything allocated on the way must stay far below the
    size of the source's luma plane (8 MB)."""
    image = scene(2160, 3840)
    planes = tuple(bgr_to_planes(image, PixelFormat.PIXEL_FORMAT_I420))
    pre = Preprocessor(nanodet.input_format(416, 416), 1)
    pre.from_planes(0, planes, PixelFormat.PIXEL_FORMAT_I420, 3840, 2160)  # warm-up
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        pre.from_planes(0, planes, PixelFormat.PIXEL_FORMAT_I420, 3840, 2160)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3840 * 2160 // 4, f"peak allocation {peak} bytes during preprocessing"


def test_nanodet_input_is_normalised_bgr_nchw() -> None:
    pre = Preprocessor(nanodet.input_format(416, 416), 2)
    image = np.full((200, 400, 3), (10, 20, 30), np.uint8)
    pre.from_bgr(1, image)
    x = pre.inputs(2)[1]
    assert x.shape == (3, 416, 416) and x.dtype == np.float32
    expect = (np.array([10, 20, 30]) - np.array(nanodet.MEAN_BGR)) / np.array(nanodet.STD_BGR)
    np.testing.assert_allclose(x[:, 100, 100], expect, rtol=1e-5)
    # Top-left letterbox padded with 0 (before normalisation): rows below the image.
    np.testing.assert_allclose(
        x[:, 300, 100], -np.array(nanodet.MEAN_BGR) / np.array(nanodet.STD_BGR), rtol=1e-5
    )


def test_yolo_and_ssdlite_inputs() -> None:
    y = Preprocessor(yolo.input_format(320, 320), 1)
    y.from_bgr(0, np.full((100, 200, 3), (0, 0, 255), np.uint8))  # pure red in BGR
    x = y.inputs(1)[0]
    np.testing.assert_allclose(x[:, 160, 160], [1.0, 0.0, 0.0], atol=1e-6)  # RGB order, /255
    np.testing.assert_allclose(x[:, 5, 160], [114 / 255] * 3, atol=1e-6)  # centred, grey bars
    s = Preprocessor(ssdlite.input_format(300, 300), 1)
    lb = s.from_bgr(0, np.full((100, 200, 3), (0, 0, 255), np.uint8))
    assert (lb.scaled_width, lb.scaled_height, lb.pad_x, lb.pad_y) == (300, 300, 0, 0)  # stretched
    assert s.inputs(1).dtype == np.uint8 and tuple(s.inputs(1)[0, 150, 150]) == (255, 0, 0)


def test_letterbox_maps_boxes_back_to_the_source_frame() -> None:
    fmt = yolo.input_format(640, 640)
    lb = plan_letterbox(1280, 720, fmt)
    assert (lb.scaled_width, lb.scaled_height, lb.pad_x, lb.pad_y) == (640, 360, 0, 140)
    box = np.array([[100, 140 + 50, 200, 140 + 150]], np.float32)
    np.testing.assert_allclose(lb.to_source(box), [[200, 100, 400, 300]])
    # Ring frame 1280x720 resized by the decoder from a 1920x1080 original:
    np.testing.assert_allclose(lb.to_source(box, 1920, 1080), [[300, 150, 600, 450]])
    # Clipped to the frame.
    np.testing.assert_allclose(lb.to_source(np.array([[-5, 100, 700, 600]], np.float32)), [[0, 0, 1280, 720]])
    even = plan_letterbox(1001, 777, nanodet.input_format(416, 416), even=True)
    assert even.scaled_width % 2 == 0 and even.scaled_height % 2 == 0
