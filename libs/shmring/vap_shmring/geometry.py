"""Where the planes of one frame lie inside a slot, for each pixel format.

Every plane starts at an offset aligned to ``row_align`` and every row of a plane starts ``stride``
bytes after the previous one, with ``stride`` = the row's payload rounded up to ``row_align`` (64 by
default: one cache line, and what SIMD converters like). The numbers computed here are exactly the
``strides`` and ``plane_offsets`` a FrameRef carries, so a reader needs nothing else to interpret a slot.

========  ======  ==========================================================
format    planes  plane shapes (numpy, uint8)
========  ======  ==========================================================
BGR24     1       (H, W, 3)
RGB24     1       (H, W, 3)
GRAY8     1       (H, W)
I420      3       Y (H, W), U (H/2, W/2), V (H/2, W/2)
NV12      2       Y (H, W), UV (H/2, W/2, 2)
========  ======  ==========================================================

4:2:0 formats need an even width and height (as FFmpeg's and OpenCV's converters do).
"""

from __future__ import annotations

from dataclasses import dataclass

from vap_proto.v1.frame_pb2 import PixelFormat

BGR24 = PixelFormat.PIXEL_FORMAT_BGR24
RGB24 = PixelFormat.PIXEL_FORMAT_RGB24
I420 = PixelFormat.PIXEL_FORMAT_I420
NV12 = PixelFormat.PIXEL_FORMAT_NV12
GRAY8 = PixelFormat.PIXEL_FORMAT_GRAY8
SUPPORTED_FORMATS = (BGR24, RGB24, I420, NV12, GRAY8)
MAX_ROW_ALIGN = 4096


@dataclass(frozen=True)
class PlaneLayout:
    """One plane: ``rows`` rows of ``row_bytes`` payload, ``stride`` bytes apart, from ``offset``."""

    offset: int
    stride: int
    rows: int
    row_bytes: int
    # numpy shape and byte strides of the plane (the first stride is the row stride).
    shape: tuple[int, ...]
    strides: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bytes from the plane's start to the end of its last row's payload."""
        return (self.rows - 1) * self.stride + self.row_bytes


@dataclass(frozen=True)
class FrameGeometry:
    width: int
    height: int
    pixel_format: PixelFormat.ValueType
    row_align: int
    planes: tuple[PlaneLayout, ...]

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(p.stride for p in self.planes)

    @property
    def plane_offsets(self) -> tuple[int, ...]:
        return tuple(p.offset for p in self.planes)

    @property
    def frame_bytes(self) -> int:
        """Bytes a slot needs for this frame (end of the last plane's last padded row)."""
        last = self.planes[-1]
        return last.offset + last.rows * last.stride

    @property
    def is_tight(self) -> bool:
        """True when the planes are back to back without any padding (the classic contiguous layout)."""
        offset = 0
        for plane in self.planes:
            if plane.offset != offset or plane.stride != plane.row_bytes:
                return False
            offset += plane.rows * plane.row_bytes
        return True


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def _plane_specs(
    width: int, height: int, pixel_format: PixelFormat.ValueType
) -> list[tuple[int, int, tuple[int, ...], tuple[int, ...]]]:
    """(rows, row_bytes, shape without rows, element strides without row stride) of each plane."""
    if pixel_format in (BGR24, RGB24):
        return [(height, width * 3, (width, 3), (3, 1))]
    if pixel_format == GRAY8:
        return [(height, width, (width,), (1,))]
    if width % 2 or height % 2:
        raise ValueError(f"4:2:0 formats need an even width and height, got {width}x{height}")
    cw, ch = width // 2, height // 2
    if pixel_format == I420:
        return [(height, width, (width,), (1,)), (ch, cw, (cw,), (1,)), (ch, cw, (cw,), (1,))]
    if pixel_format == NV12:
        return [(height, width, (width,), (1,)), (ch, width, (cw, 2), (2, 1))]
    raise ValueError(f"unsupported pixel format {pixel_format}")


def compute_geometry(
    width: int, height: int, pixel_format: PixelFormat.ValueType, row_align: int = 64
) -> FrameGeometry:
    """The plane layout of a ``width`` x ``height`` ``pixel_format`` frame, rows aligned to ``row_align``."""
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if row_align < 1 or row_align > MAX_ROW_ALIGN or row_align & (row_align - 1):
        raise ValueError(f"row_align must be a power of two in [1, {MAX_ROW_ALIGN}], got {row_align}")
    planes: list[PlaneLayout] = []
    offset = 0
    for rows, row_bytes, shape_tail, strides_tail in _plane_specs(width, height, pixel_format):
        stride = align_up(row_bytes, row_align)
        offset = align_up(offset, row_align)
        planes.append(
            PlaneLayout(offset, stride, rows, row_bytes, (rows, *shape_tail), (stride, *strides_tail))
        )
        offset += rows * stride
    return FrameGeometry(width, height, pixel_format, row_align, tuple(planes))
