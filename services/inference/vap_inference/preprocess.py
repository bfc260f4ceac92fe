"""Preprocessing straight from the ring's pixel format into the model's input buffer.

Only the *downscaled* image is ever converted: for I420/NV12 the Y plane and the chroma plane(s) are each
resized to the letterbox size (the chroma to half of it), written into one small contiguous 4:2:0 buffer,
and that small buffer is colour-converted into the letterbox canvas. A 1080p frame is never converted to
BGR at full size (that alone would be a 6 MB write per frame and most of the preprocessing time).

Letterbox: the image is scaled to fit the network input keeping its aspect ratio (or stretched, for models
whose graph stretches anyway, like the SSDLite export) and the rest is padded. ``Letterbox.to_source``
maps boxes from network-input pixels back to the original frame's pixels (FrameRef.source_width/height,
which may differ from the ring frame when the decoder resized).

Rectangular input (``InputFormat.stride`` > 0, fully convolutional models loaded with free spatial
dimensions): the network input shrinks to the letterboxed image rounded up to a multiple of the stride, so a
16:9 frame runs NanoDet at 416x256 instead of 416x416, 38 % fewer pixels, none of them padding the model
would have to look at. The scale is the same as for the square input; only the padding is cut. A batch has
one input size: the size of its first frame; later frames of the batch are letterboxed into it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

import cv2
import numpy as np
import numpy.typing as npt

from vap_proto.v1.frame_pb2 import PixelFormat

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]

BGR24 = PixelFormat.PIXEL_FORMAT_BGR24
RGB24 = PixelFormat.PIXEL_FORMAT_RGB24
I420 = PixelFormat.PIXEL_FORMAT_I420
NV12 = PixelFormat.PIXEL_FORMAT_NV12
GRAY8 = PixelFormat.PIXEL_FORMAT_GRAY8


class Layout(StrEnum):
    NCHW_FLOAT = "nchw_float"  # float32 [N, 3, H, W], (pixel - mean) * scale per channel
    NHWC_UINT8 = "nhwc_uint8"  # uint8 [N, H, W, 3], raw pixels (the graph normalises itself)


@dataclass(frozen=True)
class InputFormat:
    width: int
    height: int
    layout: Layout
    rgb: bool  # channel order of the model input: True = RGB, False = BGR
    keep_ratio: bool = True  # False: stretch to the input size (no padding)
    center: bool = False  # letterbox placement: centred, or top-left
    pad_value: int = 0
    # Per channel, in the model's channel order; for NCHW_FLOAT only.
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # > 0: the input may shrink to the letterboxed image rounded up to a multiple of this (width x height
    # is then the largest input); 0: always width x height. NCHW_FLOAT, keep_ratio, top-left only.
    stride: int = 0

    def __post_init__(self) -> None:
        if self.stride and (self.layout is not Layout.NCHW_FLOAT or not self.keep_ratio or self.center):
            raise ValueError("a rectangular input (stride > 0) needs NCHW_FLOAT, keep_ratio and top-left")


@dataclass(frozen=True, slots=True)
class Letterbox:
    """Where an image of ``src_width`` x ``src_height`` landed in the network input."""

    src_width: int
    src_height: int
    scaled_width: int
    scaled_height: int
    pad_x: int
    pad_y: int

    def to_source(self, boxes: F32, source_width: int = 0, source_height: int = 0) -> F32:
        """Boxes (x1, y1, x2, y2) in network-input pixels -> pixels of the original frame, clipped to it.

        ``source_width/height`` is the frame size before any decoder resize (FrameRef.source_*); 0 = the
        size of the image that was preprocessed.
        """
        sw = source_width or self.src_width
        sh = source_height or self.src_height
        fx = sw / self.scaled_width
        fy = sh / self.scaled_height
        out = np.empty_like(boxes, dtype=np.float32)
        out[:, 0::2] = (boxes[:, 0::2] - self.pad_x) * fx
        out[:, 1::2] = (boxes[:, 1::2] - self.pad_y) * fy
        np.clip(out[:, 0::2], 0, sw, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, sh, out=out[:, 1::2])
        return out


def plan_letterbox(src_width: int, src_height: int, fmt: InputFormat, *, even: bool = False) -> Letterbox:
    """The scaled size and padding for one source size. ``even``: round the scaled size down to even
    numbers (4:2:0 sources are resized per plane, and the chroma planes are half the size)."""
    if src_width <= 0 or src_height <= 0:
        raise ValueError(f"image size must be positive, got {src_width}x{src_height}")
    if fmt.keep_ratio:
        scale = min(fmt.width / src_width, fmt.height / src_height)
        w = min(fmt.width, max(1, round(src_width * scale)))
        h = min(fmt.height, max(1, round(src_height * scale)))
    else:
        w, h = fmt.width, fmt.height
    if even:
        w, h = max(2, w & ~1), max(2, h & ~1)
    if fmt.center:
        pad_x, pad_y = (fmt.width - w) // 2, (fmt.height - h) // 2
    else:
        pad_x = pad_y = 0
    return Letterbox(src_width, src_height, w, h, pad_x, pad_y)


def input_size(lb: Letterbox, fmt: InputFormat) -> tuple[int, int]:
    """(width, height) of the network input for an image letterboxed as ``lb``: the whole input, or for a
    rectangular format the image's extent rounded up to the stride."""
    if not fmt.stride:
        return fmt.width, fmt.height
    s = fmt.stride
    w = min(fmt.width, -(-(lb.pad_x + lb.scaled_width) // s) * s)
    h = min(fmt.height, -(-(lb.pad_y + lb.scaled_height) // s) * s)
    return w, h


def area_factor(width: int, height: int, size: tuple[int, int]) -> int:
    """The integer factor of the box-filter stage of ``resize``: the largest k <= the shrink ratio that
    divides both sides (1 = none)."""
    k = min(width // size[0], height // size[1])
    while k >= 2 and (width % k or height % k):
        k -= 1
    return k


def resize(src: U8, size: tuple[int, int], dst: U8) -> None:
    """Resize ``src`` into ``dst`` (``size`` = (width, height) of dst).

    Shrinking by 2x or more: first an integer-factor box filter (INTER_AREA: averages every source pixel,
    so no aliasing) to at most 1/4 of the source area, then INTER_LINEAR to the exact size. Plain
    INTER_LINEAR aliases on big ratios (it reads 2x2 pixels only). OpenCV's INTER_AREA is fast only for
    exact integer ratios, and vectorised only for 2x2: the factor must divide both sides (``area_factor``;
    1280 px by 3 is 426.67, and the fractional code costs 1.7 ms for 720p luma against 0.13 ms for 2x2), and
    factors 2 and 4 are done as 2x2 steps (1080p luma by 4: 0.30 ms against 1.35 ms in one step, each
    pixel within 1 level of it). Sizes no factor divides (odd ones) keep the fractional box filter.
    """
    h, w = src.shape[:2]
    k = area_factor(w, h, size)
    if k < 2:
        k = min(w // size[0], h // size[1])  # no exact factor: the slow path, still anti-aliased
        if k >= 2:
            src = np.asarray(cv2.resize(src, (w // k, h // k), interpolation=cv2.INTER_AREA), np.uint8)
    else:
        # Factors above 4 (4K sources) in one step: a first 2x2 step would allocate a quarter of the
        # source plane per frame.
        while k % 2 == 0 and k <= 4:
            h, w, k = h // 2, w // 2, k // 2
            src = np.asarray(cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA), np.uint8)
        if k > 1:
            src = np.asarray(cv2.resize(src, (w // k, h // k), interpolation=cv2.INTER_AREA), np.uint8)
    cv2.resize(src, size, dst=dst, interpolation=cv2.INTER_LINEAR)


class Preprocessor:
    """Owns a model's batch input buffer and fills one batch index at a time from any ring pixel format.

    Not thread-safe: one user at a time (the detector's lock). Allocates nothing per frame except what
    OpenCV needs internally; the scratch buffers are at most the size of the network input.
    """

    def __init__(self, fmt: InputFormat, max_batch: int) -> None:
        self.fmt = fmt
        self.max_batch = max_batch
        h, w = fmt.height, fmt.width
        # (width, height) of the batch being filled: set by its first frame (rectangular formats).
        self.size = (w, h)
        self.batch: npt.NDArray[np.float32] | npt.NDArray[np.uint8]
        # Per input size: the uint8 HWC canvas and its channel planes (one entry unless rectangular).
        self._canvases: dict[tuple[int, int], tuple[U8, list[U8]]] = {}
        # NCHW float: the image is composed on a uint8 canvas, then converted into the batch slot; NHWC
        # uint8: the batch slot itself is the canvas.
        self._separate_canvas = fmt.layout is Layout.NCHW_FLOAT
        if self._separate_canvas:
            self.batch = np.zeros((max_batch, 3, h, w), np.float32)
            # (pixel - mean) * scale for every uint8 value, per channel, in float32 exactly as the
            # arithmetic on the whole image would round it: one table lookup per pixel instead of a
            # strided transpose-convert and two more passes.
            mean = np.asarray(fmt.mean, np.float32).reshape(3, 1)
            scale = np.asarray(fmt.scale, np.float32).reshape(3, 1)
            table = (np.arange(256, dtype=np.float32)[None, :] - mean) * scale
            self._luts: list[F32] = [np.ascontiguousarray(t, np.float32).reshape(256, 1) for t in table]
        else:
            self.batch = np.full((max_batch, h, w, 3), fmt.pad_value, np.uint8)
        # Small scratch: a contiguous 4:2:0 image of at most the input size, and a 3-channel image for
        # channel swaps and grey expansion.
        self._yuv = np.empty(w * h * 3 // 2 + 4, np.uint8)
        self._small = np.empty(h * w * 3, np.uint8)

    # --- public -----------------------------------------------------------------------------------------

    def from_planes(
        self,
        index: int,
        planes: tuple[U8, ...],
        pixel_format: PixelFormat.ValueType,
        width: int,
        height: int,
    ) -> Letterbox:
        """Fill batch slot ``index`` from the planes of a ring slot (zero-copy views)."""
        even = pixel_format in (I420, NV12)
        lb = self._plan(index, width, height, even)
        canvas = self._canvas_for(index)
        region = canvas[lb.pad_y : lb.pad_y + lb.scaled_height, lb.pad_x : lb.pad_x + lb.scaled_width]
        if pixel_format == I420:
            self._from_i420(planes, lb, region)
        elif pixel_format == NV12:
            self._from_nv12(planes, lb, region)
        elif pixel_format in (BGR24, RGB24):
            self._from_packed(planes[0], pixel_format == RGB24, lb, region)
        elif pixel_format == GRAY8:
            small = self._small_view(lb, 1)
            resize(planes[0], (lb.scaled_width, lb.scaled_height), small)
            cv2.cvtColor(small, cv2.COLOR_GRAY2BGR, dst=region)
        else:
            raise ValueError(f"unsupported pixel format {pixel_format}")
        self._pad(canvas, lb)
        self._finish(index)
        return lb

    def from_bgr(self, index: int, image: U8) -> Letterbox:
        """Fill batch slot ``index`` from a BGR image (an uploaded picture, a test frame)."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 BGR image, got shape {image.shape}")
        return self.from_planes(index, (image,), BGR24, image.shape[1], image.shape[0])

    def inputs(self, count: int) -> npt.NDArray[np.float32] | npt.NDArray[np.uint8]:
        """The first ``count`` batch slots (a view, contiguous: the batch axis is the outermost)."""
        return self._slots()[:count]

    # --- input size -------------------------------------------------------------------------------------

    def _plan(self, index: int, width: int, height: int, even: bool) -> Letterbox:
        if not self.fmt.stride:
            return plan_letterbox(width, height, self.fmt, even=even)
        if index == 0:  # a new batch: its size follows this frame
            lb = plan_letterbox(width, height, self.fmt, even=even)
            self.size = input_size(lb, self.fmt)
            return lb
        w, h = self.size
        return plan_letterbox(width, height, replace(self.fmt, width=w, height=h), even=even)

    def _slots(self) -> npt.NDArray[np.float32] | npt.NDArray[np.uint8]:
        """All batch slots at the current input size: a contiguous view of the batch buffer."""
        w, h = self.size
        if (w, h) == (self.fmt.width, self.fmt.height):
            return self.batch
        return self.batch.reshape(-1)[: self.max_batch * 3 * h * w].reshape(self.max_batch, 3, h, w)

    # --- per format -------------------------------------------------------------------------------------

    def _canvas_for(self, index: int) -> U8:
        if not 0 <= index < self.max_batch:
            raise IndexError(f"batch index {index} outside 0..{self.max_batch - 1}")
        if self._separate_canvas:
            return self._canvas_and_planes()[0]
        slot: U8 = self.batch[index]  # NHWC_UINT8: the batch is uint8
        return slot

    def _canvas_and_planes(self) -> tuple[U8, list[U8]]:
        found = self._canvases.get(self.size)
        if found is None:  # first use of this size (rectangular formats: a few sizes per service)
            w, h = self.size
            found = self._canvases[self.size] = (
                np.full((h, w, 3), self.fmt.pad_value, np.uint8),
                list(np.empty((3, h, w), np.uint8)),
            )
        return found

    def _small_view(self, lb: Letterbox, channels: int) -> U8:
        n = lb.scaled_height * lb.scaled_width * channels
        shape = (
            (lb.scaled_height, lb.scaled_width, channels)
            if channels > 1
            else (lb.scaled_height, lb.scaled_width)
        )
        return self._small[:n].reshape(shape)

    def _from_packed(self, image: U8, is_rgb: bool, lb: Letterbox, region: U8) -> None:
        size = (lb.scaled_width, lb.scaled_height)
        if is_rgb == self.fmt.rgb:
            resize(image, size, region)  # straight into the canvas
            return
        small = self._small_view(lb, 3)
        resize(image, size, small)
        cv2.cvtColor(small, cv2.COLOR_BGR2RGB, dst=region)  # the same swap both ways

    def _yuv_planes(self, lb: Letterbox) -> tuple[U8, U8, U8]:
        """The small contiguous I420 buffer as (whole (h*3/2) x w image, Y plane, chroma area)."""
        w, h = lb.scaled_width, lb.scaled_height
        whole = self._yuv[: w * h * 3 // 2].reshape(h * 3 // 2, w)
        flat = whole.reshape(-1)
        return whole, flat[: w * h].reshape(h, w), flat[w * h :]

    def _from_i420(self, planes: tuple[U8, ...], lb: Letterbox, region: U8) -> None:
        y_src, u_src, v_src = planes
        w, h = lb.scaled_width, lb.scaled_height
        whole, y_dst, chroma = self._yuv_planes(lb)
        quarter = (w // 2) * (h // 2)
        resize(y_src, (w, h), y_dst)
        for src, dst in ((u_src, chroma[:quarter]), (v_src, chroma[quarter:])):
            resize(src, (w // 2, h // 2), dst.reshape(h // 2, w // 2))
        code = cv2.COLOR_YUV2RGB_I420 if self.fmt.rgb else cv2.COLOR_YUV2BGR_I420
        cv2.cvtColor(whole, code, dst=region)

    def _from_nv12(self, planes: tuple[U8, ...], lb: Letterbox, region: U8) -> None:
        y_src, uv_src = planes
        w, h = lb.scaled_width, lb.scaled_height
        whole, y_dst, chroma = self._yuv_planes(lb)
        resize(y_src, (w, h), y_dst)
        resize(uv_src, (w // 2, h // 2), chroma.reshape(h // 2, w // 2, 2))
        code = cv2.COLOR_YUV2RGB_NV12 if self.fmt.rgb else cv2.COLOR_YUV2BGR_NV12
        cv2.cvtColor(whole, code, dst=region)

    # --- canvas -> model input --------------------------------------------------------------------------

    def _pad(self, canvas: U8, lb: Letterbox) -> None:
        """Fill the bars around the image (the canvas is reused, so old pixels must not show through)."""
        v = self.fmt.pad_value
        x0, y0 = lb.pad_x, lb.pad_y
        x1, y1 = x0 + lb.scaled_width, y0 + lb.scaled_height
        canvas[:y0] = v
        canvas[y1:] = v
        canvas[y0:y1, :x0] = v
        canvas[y0:y1, x1:] = v

    def _finish(self, index: int) -> None:
        if not self._separate_canvas:
            return  # NHWC uint8: the canvas is the batch slot, nothing more to do
        out = self._slots()[index]
        canvas, planes = self._canvas_and_planes()
        # uint8 HWC -> channel planes (contiguous, SIMD), then each plane through its table straight into
        # the float32 CHW batch slot: ~0.2 ms against ~0.4 ms for transpose-convert, subtract, multiply.
        cv2.split(canvas, planes)
        for plane, table, dst in zip(planes, self._luts, out, strict=True):
            cv2.LUT(plane, table, dst=dst)
