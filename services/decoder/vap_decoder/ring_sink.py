"""Copy decoded frames straight into shmring slots: the only copy of the pixels between FFmpeg and readers.

FFmpeg decodes H.264 into its own frame pool (YUV 4:2:0 planes with padded line sizes). The ring's native
format for decoders is I420, so each plane is copied once, row-stride aware, from FFmpeg's buffer into the
slot's plane view; no full-size intermediate array (``to_ndarray``) and no colour conversion at full size:
consumers convert only the downscaled image they need.
"""

from __future__ import annotations

import av
import numpy as np
import numpy.typing as npt

from vap_shmring import FrameView

_I420_NAMES = frozenset({"yuv420p", "yuvj420p"})


def _plane_array(plane: av.video.plane.VideoPlane) -> npt.NDArray[np.uint8]:
    """A zero-copy view of one FFmpeg plane, cropped to its visible width."""
    rows = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(plane.height, plane.line_size)
    return rows[:, : plane.width]


def copy_i420(frame: av.VideoFrame, slot: FrameView) -> None:
    """Write ``frame`` into an I420 slot of the same size (Y, U, V planes), converting only when FFmpeg
    gave another pixel format (e.g. a 4:2:2 camera)."""
    if frame.format.name not in _I420_NAMES:
        frame = frame.reformat(format="yuv420p")
    for plane, dst in zip(frame.planes, slot.planes, strict=True):
        np.copyto(dst, _plane_array(plane))
