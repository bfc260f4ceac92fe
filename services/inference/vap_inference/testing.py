"""Helpers for tests and benchmarks: sample frames, model availability, writing frames into a ring."""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from vap_common.paths import models_dir, sample_video
from vap_models import ModelSpec
from vap_proto.v1.frame_pb2 import FrameRef, PixelFormat
from vap_shmring import RingWriter

U8 = npt.NDArray[np.uint8]


def model_path(spec: ModelSpec) -> Path:
    return spec.resolve_path(models_dir())


def missing_model_reason(spec: ModelSpec) -> str | None:
    """Why a test needing ``spec``'s file must skip, or None when the file is there."""
    path = model_path(spec)
    if path.is_file():
        return None
    return (
        f"model file {path} is absent: set VAP_MODELS_DIR to a directory with the ready copies "
        "(e.g. ../shared/models) or run `python -m vap_stack.models fetch`"
    )


@functools.cache
def _decoded(name: str, last: int) -> tuple[U8, ...]:
    import av

    frames: list[U8] = []
    with av.open(str(sample_video(name))) as container:
        for frame in container.decode(video=0):
            frames.append(np.asarray(frame.to_ndarray(format="bgr24"), np.uint8))
            if len(frames) > last:
                break
    return tuple(frames)


def video_frames(indices: tuple[int, ...], name: str = "vtest-576p25.mp4") -> dict[int, U8]:
    """BGR frames of a sample video by index (decoded once per process and cached)."""
    frames = _decoded(name, max(indices))
    return {i: frames[i].copy() for i in indices}


def bgr_to_planes(image: U8, pixel_format: PixelFormat.ValueType) -> list[U8]:
    """A BGR image as the planes a decoder would write for ``pixel_format`` (tight, no padding)."""
    h, w = image.shape[:2]
    if pixel_format == PixelFormat.PIXEL_FORMAT_BGR24:
        return [image]
    if pixel_format == PixelFormat.PIXEL_FORMAT_RGB24:
        return [np.ascontiguousarray(image[..., ::-1])]
    if pixel_format == PixelFormat.PIXEL_FORMAT_GRAY8:
        return [np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), np.uint8)]
    yuv = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), np.uint8).reshape(-1)
    y = yuv[: w * h].reshape(h, w)
    u = yuv[w * h : w * h * 5 // 4].reshape(h // 2, w // 2)
    v = yuv[w * h * 5 // 4 :].reshape(h // 2, w // 2)
    if pixel_format == PixelFormat.PIXEL_FORMAT_I420:
        return [y, u, v]
    if pixel_format == PixelFormat.PIXEL_FORMAT_NV12:
        return [y, np.ascontiguousarray(np.stack([u, v], axis=2))]
    raise ValueError(f"unsupported pixel format {pixel_format}")


def write_frame(
    ring: RingWriter,
    image: U8,
    *,
    sequence: int,
    capture_time_ns: int = 0,
    scenario_id: str = "",
    source_size: tuple[int, int] | None = None,
) -> FrameRef:
    """Write a BGR image into the next slot of ``ring`` in the ring's pixel format; returns its FrameRef
    (with source_width/height set when the image stands for a resized ``source_size`` original)."""
    view = ring.begin()
    for dst, src in zip(view.planes, bgr_to_planes(image, ring.geometry.pixel_format), strict=True):
        np.copyto(dst, src)
    ref = ring.commit(sequence=sequence, capture_time_ns=capture_time_ns, scenario_id=scenario_id)
    if source_size is not None:
        ref.source_width, ref.source_height = source_size
    return ref
