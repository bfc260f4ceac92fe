"""One process's mapping of a ring: the mmap, typed word views of its header and control table, and the
precomputed numpy views of every slot. Shared by the writer (read-write) and readers (read-only).

release() drops every view this object made and unmaps. If the caller still holds slot views, CPython
refuses the unmap (BufferError) instead of leaving them dangling; the mapping is then freed when the last
of those views is garbage-collected (each view keeps the mmap object alive). See views.py.
"""

from __future__ import annotations

import mmap

from vap_shmring.geometry import FrameGeometry
from vap_shmring.layout import CONTROL_LINE, Header
from vap_shmring.views import FrameView, slot_views


class RingMapping:
    def __init__(self, buf: mmap.mmap, header: Header, geometry: FrameGeometry) -> None:
        self.buf = buf
        self.geometry = geometry
        self._whole = memoryview(buf)
        # Python ints from a memoryview item are plain 8-byte loads/stores of aligned words: single-copy
        # atomic, and about 2x faster than indexing a numpy array.
        self.header_words = self._whole[: header.control_offset].cast("Q")
        control = self._whole[
            header.control_offset : header.control_offset + header.slot_count * CONTROL_LINE
        ]
        self.ctl_u = control.cast("Q")
        self.ctl_s = control.cast("q")
        control.release()
        self.views: tuple[FrameView, ...] = slot_views(
            buf, header.data_offset, header.slot_stride, header.slot_count, geometry
        )

    def release(self) -> bool:
        """Drop our views and unmap; False when caller-held views defer the unmap to the GC."""
        self.views = ()
        for mv in (self.header_words, self.ctl_u, self.ctl_s, self._whole):
            mv.release()
        try:
            self.buf.close()
        except BufferError:
            return False
        return True
