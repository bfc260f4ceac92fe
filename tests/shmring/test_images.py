"""vap_shmring.images: the one ring-slot -> BGR conversion the live view, dataset capture, ReID and attributes
share. Whole frames and crops come back as the picture that was written, in every ring pixel format (padded
rows included), crops agree with the same region of the whole frame, and an overwritten slot gives None."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from vap_inference.testing import write_frame
from vap_proto.v1 import frame_pb2
from vap_shmring import ReaderPool, RingWriter
from vap_shmring.images import ArrayFrame, RingFrame, clip_box

PF = frame_pb2.PixelFormat
FORMATS = [
    PF.PIXEL_FORMAT_BGR24,
    PF.PIXEL_FORMAT_RGB24,
    PF.PIXEL_FORMAT_GRAY8,
    PF.PIXEL_FORMAT_I420,
    PF.PIXEL_FORMAT_NV12,
]


def _picture(width: int, height: int) -> np.ndarray:
    """Smooth colour gradients (4:2:0 subsampling keeps them within a few levels) with a dark box."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height) + 64], -1)
    img = img.astype(np.uint8)
    img[height // 4 : height // 2, width // 3 : width // 2] = (20, 30, 40)
    return img


def _close(a: np.ndarray, b: np.ndarray, fmt: int) -> bool:
    if fmt == PF.PIXEL_FORMAT_GRAY8:  # written as luma: compare brightness only
        a, b = cv2.cvtColor(a, cv2.COLOR_BGR2GRAY), cv2.cvtColor(b, cv2.COLOR_BGR2GRAY)
    return a.shape == b.shape and float(np.abs(a.astype(int) - b.astype(int)).mean()) < 6


@pytest.mark.parametrize("fmt", FORMATS, ids=[PF.Name(f) for f in FORMATS])
@pytest.mark.parametrize("size", [(256, 192), (202, 118)], ids=["tight", "padded-rows"])
def test_whole_frames_and_crops_are_the_written_picture(fmt: int, size: tuple[int, int]) -> None:
    width, height = size
    picture = _picture(width, height)
    writer = RingWriter.create(
        f"images-{time.monotonic_ns()}", width=width, height=height, pixel_format=fmt, slots=2
    )
    pool = ReaderPool()
    try:
        ref = write_frame(writer, picture, sequence=0)
        frame = RingFrame(pool, ref)
        whole = frame.whole()
        assert whole is not None and _close(whole, picture, fmt)
        boxes = np.array(
            [[10, 12, 90, 100], [width // 3, height // 4, width // 2, height // 2], [-5, -5, 40, 30]]
        )
        crops = frame.crops(boxes.astype(np.float64))
        expected = ArrayFrame(whole).crops(boxes.astype(np.float64))
        assert crops is not None and expected is not None
        for crop, want in zip(crops, expected, strict=True):
            assert crop.shape[2] == 3 and abs(crop.shape[0] - want.shape[0]) <= 1
            h, w = min(crop.shape[0], want.shape[0]), min(crop.shape[1], want.shape[1])
            assert _close(crop[:h, :w], want[:h, :w], fmt)
        # The dark box crops to the dark colour.
        dark = crops[1].reshape(-1, 3).mean(0)
        assert dark.max() < 60
        for k in range(2):  # the writer wraps around and overwrites the slot
            write_frame(writer, picture, sequence=k + 1)
        assert frame.whole() is None and frame.crops(boxes.astype(np.float64)) is None
    finally:
        pool.close()
        writer.close()


def test_boxes_outside_the_frame_give_empty_crops() -> None:
    assert clip_box(np.array([500.0, 10, 600, 50]), 320, 240, even=False) is None
    assert clip_box(np.array([3.0, 5, 11, 13]), 320, 240, even=True) == (2, 4, 10, 12)
    crops = ArrayFrame(_picture(64, 48)).crops(np.array([[100.0, 100, 120, 120], [0, 0, 64, 48]]))
    assert crops is not None and crops[0].shape == (0, 0, 3) and crops[1].shape == (48, 64, 3)
