"""Zero-copy numpy views of a slot's planes, built once per slot when a ring is created or attached.

Building an ndarray costs a few microseconds; doing it per frame would be most of the hand-off budget. So
the writer and every reader build all slots' views up front and a frame lookup is a tuple index.

Views and close(): every view holds (through its base array) a buffer export on the ring's ``mmap``,
and CPython refuses to unmap an mmap with live exports (``BufferError``) rather than leave dangling
pointers. The ring objects' close() drops their own views and tries to unmap; if the caller still holds
views, the unmap is left to the garbage collector (the views keep the mmap alive and it unmaps when the
last view dies). So a view can never point at unmapped memory; holding views after close() only delays
freeing the mapping.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vap_shmring.errors import ShmRingError
from vap_shmring.geometry import I420, NV12, FrameGeometry

Plane = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class FrameView:
    """The planes of one slot (read-only for readers, writable for the writer), in FrameRef plane order."""

    slot: int
    planes: tuple[Plane, ...]
    # Packed formats: planes[0]. 4:2:0 formats: the classic (H*3/2) x W buffer (what cv2.cvtColor's
    # COLOR_YUV2BGR_I420 / _NV12 take) when the layout is tight, else None.
    contiguous: Plane | None

    @property
    def image(self) -> Plane:
        """The whole frame as one array: HxWx3 (BGR/RGB), HxW (GRAY8), (H*3/2)xW (tight I420/NV12)."""
        if self.contiguous is None:
            raise ShmRingError(
                "the planes of this ring are padded; use .planes (or create it with row_align=1)"
            )
        return self.contiguous


def _contiguous(buf: Plane, base: int, geometry: FrameGeometry, planes: tuple[Plane, ...]) -> Plane | None:
    if geometry.pixel_format not in (I420, NV12):
        return planes[0]
    if not geometry.is_tight:
        return None
    rows = geometry.height * 3 // 2
    return np.ndarray((rows, geometry.width), dtype=np.uint8, buffer=buf, offset=base)


def slot_views(
    mapping: mmap.mmap, data_offset: int, slot_stride: int, slots: int, geometry: FrameGeometry
) -> tuple[FrameView, ...]:
    """One FrameView per slot over ``mapping``; writable exactly when the mapping is writable."""
    # Careful: np.ndarray(buffer=an_mmap) keeps a reference to the mmap but *no buffer export*, so
    # mmap.close() would unmap under it and the next access segfaults. np.frombuffer holds a real export
    # (through a memoryview), and every plane view below has this array as its base, so the mmap cannot
    # be unmapped while any view is alive.
    buf = np.frombuffer(mapping, dtype=np.uint8)
    views = []
    for slot in range(slots):
        base = data_offset + slot * slot_stride
        planes = tuple(
            np.ndarray(p.shape, dtype=np.uint8, buffer=buf, offset=base + p.offset, strides=p.strides)
            for p in geometry.planes
        )
        views.append(FrameView(slot, planes, _contiguous(buf, base, geometry, planes)))
    return tuple(views)
