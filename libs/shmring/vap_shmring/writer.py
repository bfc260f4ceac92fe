"""The writer side: one process per channel fills slots round robin and publishes FrameRefs.

Seqlock protocol, writer half (see fence.py for why each fence is where it is)::

    begin():   gen[slot] = base + 2n + 1     odd: "being written", every older ref to the slot is now stale
               writer_fence()                the odd store is visible before any pixel store
               -> writable views             the decoder converts straight into slot memory
    commit():  metadata -> control line
               writer_fence()                pixels and metadata are visible before the even store
               gen[slot] = base + 2n + 2     even: committed
               latest = n + 1                for latest()

The writer never waits for readers: live video overwrites the oldest slot regardless of who reads it, and
a reader detects that through the generation.
"""

from __future__ import annotations

import mmap
import os
import time
import weakref
from collections.abc import Sequence
from types import TracebackType

import numpy as np
import numpy.typing as npt

from vap_proto.v1.frame_pb2 import FrameRef, PixelFormat
from vap_shmring.errors import RingClosedError, WriterStateError
from vap_shmring.fence import writer_fence
from vap_shmring.geometry import I420, NV12, FrameGeometry, compute_geometry
from vap_shmring.layout import (
    CTL_CAPTURE,
    CTL_COMMIT,
    CTL_EPOCH,
    CTL_GENERATION,
    CTL_PTS,
    CTL_SEQUENCE,
    CTL_WORDS,
    LATEST_WORD,
    WRITER_CLOSED,
    WRITER_OPEN,
    WRITER_STATE_WORD,
    Header,
)
from vap_shmring.mapping import RingMapping
from vap_shmring.naming import SHM_DIR, ring_name
from vap_shmring.segment import build_header, create_segment, unlink_own
from vap_shmring.views import FrameView


def _release(shm_dir: str, name: str, fd: int, mapping: RingMapping) -> None:
    """Mark closed, unlink the name, unmap, drop the writer lock. Also runs at GC/exit if close() wasn't."""
    mapping.header_words[WRITER_STATE_WORD] = WRITER_CLOSED
    unlink_own(shm_dir, name, fd)
    mapping.release()
    # The mmap holds its own dup of fd: if caller-held views defer the unmap, the (now nameless) segment
    # stays locked until then, which no one can observe.
    os.close(fd)


class RingWriter:
    """Owner of one channel's ring. Not thread-safe: one thread calls begin/commit in order."""

    def __init__(self, shm_dir: str, name: str, header: Header, geometry: FrameGeometry, fd: int) -> None:
        self.name = name
        self.channel_id = header.channel_id
        self.geometry = geometry
        self.slot_count = header.slot_count
        self._base = header.generation_base
        mapping = RingMapping(mmap.mmap(fd, header.total_size), header, geometry)
        self._header_words = mapping.header_words
        self._ctl_u = mapping.ctl_u
        self._ctl_s = mapping.ctl_s
        self._views = mapping.views
        self._templates = tuple(self._template(slot) for slot in range(header.slot_count))
        self._next = 0  # commit number n of the next begin()
        self._open_slot: int | None = None
        self._header_words[WRITER_STATE_WORD] = WRITER_OPEN
        writer_fence()  # fails loudly here, not mid-stream, on a CPU without a usable fence
        self._finalizer = weakref.finalize(self, _release, shm_dir, name, fd, mapping)

    @classmethod
    def create(
        cls,
        channel_id: str,
        *,
        width: int,
        height: int,
        pixel_format: PixelFormat.ValueType,
        slots: int,
        row_align: int = 64,
        shm_dir: str = SHM_DIR,
        name_prefix: str = "",
    ) -> RingWriter:
        """Create the ring of ``channel_id`` (name from :func:`ring_name` with the node's ``name_prefix``,
        mode 0600) with ``slots`` frames.

        A ring of that name left by a dead writer is replaced; one whose writer is alive raises
        RingExistsError.
        """
        geometry = compute_geometry(width, height, pixel_format, row_align)
        name = ring_name(channel_id, name_prefix)
        header = build_header(channel_id, geometry, slots)
        fd = create_segment(shm_dir, name, header)
        try:
            return cls(shm_dir, name, header, geometry, fd)
        except BaseException:
            unlink_own(shm_dir, name, fd)
            os.close(fd)
            raise

    def _template(self, slot: int) -> FrameRef:
        g = self.geometry
        return FrameRef(
            ring=self.name,
            slot=slot,
            width=g.width,
            height=g.height,
            pixel_format=g.pixel_format,
            strides=g.strides,
            plane_offsets=g.plane_offsets,
            channel_id=self.channel_id,
        )

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    @property
    def next_slot(self) -> int:
        return self._next % self.slot_count

    @property
    def pending_generation(self) -> int:
        """The generation the slot opened by begin() will get at commit()."""
        return self._base + 2 * self._next + 2

    def begin(self) -> FrameView:
        """Open the next slot (round robin) for writing; returns its writable plane views.

        Marks the slot as being written first, so refs to its previous frame are stale from here on.
        """
        if self._open_slot is not None:
            raise WriterStateError("begin() twice without commit()/abort()")
        if self.closed:
            raise RingClosedError(f"writer of {self.name!r} is closed")
        slot = self._next % self.slot_count
        self._ctl_u[slot * CTL_WORDS + CTL_GENERATION] = self._base + 2 * self._next + 1
        writer_fence()
        self._open_slot = slot
        return self._views[slot]

    def commit(
        self,
        *,
        sequence: int,
        pts_us: int = 0,
        capture_time_ns: int = 0,
        stream_epoch: int = 0,
        scenario_id: str = "",
    ) -> FrameRef:
        """Publish the slot opened by begin(); returns the FrameRef to send to readers."""
        slot = self._open_slot
        if slot is None:
            raise WriterStateError("commit() without begin()")
        n = self._next
        generation = self._base + 2 * n + 2
        commit_ns = time.time_ns()
        line = slot * CTL_WORDS
        self._ctl_u[line + CTL_SEQUENCE] = sequence
        self._ctl_s[line + CTL_PTS] = pts_us
        self._ctl_s[line + CTL_CAPTURE] = capture_time_ns
        self._ctl_s[line + CTL_COMMIT] = commit_ns
        self._ctl_u[line + CTL_EPOCH] = stream_epoch
        writer_fence()
        self._ctl_u[line + CTL_GENERATION] = generation
        self._header_words[LATEST_WORD] = n + 1
        self._next = n + 1
        self._open_slot = None

        ref = FrameRef()
        ref.CopyFrom(self._templates[slot])  # ~2x cheaper than building the message from keywords
        ref.generation = generation
        ref.sequence = sequence
        ref.pts_us = pts_us
        ref.capture_time_ns = capture_time_ns
        ref.commit_time_ns = commit_ns
        ref.stream_epoch = stream_epoch
        if scenario_id:
            ref.scenario_id = scenario_id
        return ref

    def abort(self) -> None:
        """Give up the slot opened by begin(). It stays marked "being written" (every ref to it is stale)
        until the round robin reaches it again; latest() keeps pointing at the previous frame."""
        if self._open_slot is None:
            raise WriterStateError("abort() without begin()")
        self._open_slot = None
        self._next += 1

    def write(
        self,
        frame: npt.NDArray[np.uint8] | Sequence[npt.NDArray[np.uint8]],
        *,
        sequence: int,
        pts_us: int = 0,
        capture_time_ns: int = 0,
        stream_epoch: int = 0,
        scenario_id: str = "",
    ) -> FrameRef:
        """Copy a ready frame into the next slot and commit it (begin + one copy + commit).

        ``frame`` is the planes in FrameRef order, or one array: the packed image, or the tight
        (H*3/2) x W buffer of an I420/NV12 frame. Decoders that can write into the slot directly should
        use begin()/commit() instead and skip this copy.
        """
        view = self.begin()
        try:
            for dst, src in zip(view.planes, self._source_planes(frame), strict=True):
                np.copyto(dst, src)
        except BaseException:
            self.abort()
            raise
        return self.commit(
            sequence=sequence,
            pts_us=pts_us,
            capture_time_ns=capture_time_ns,
            stream_epoch=stream_epoch,
            scenario_id=scenario_id,
        )

    def _source_planes(
        self, frame: npt.NDArray[np.uint8] | Sequence[npt.NDArray[np.uint8]]
    ) -> Sequence[npt.NDArray[np.uint8]]:
        if not isinstance(frame, np.ndarray):
            return frame
        g = self.geometry
        if g.pixel_format not in (I420, NV12):
            return [frame]
        w, h = g.width, g.height
        if frame.shape != (h * 3 // 2, w):
            raise ValueError(f"expected a ({h * 3 // 2}, {w}) 4:2:0 buffer, got {frame.shape}")
        flat = frame.reshape(-1)
        y = flat[: w * h].reshape(h, w)
        if g.pixel_format == NV12:
            return [y, flat[w * h :].reshape(h // 2, w // 2, 2)]
        quarter = w * h // 4
        u = flat[w * h : w * h + quarter].reshape(h // 2, w // 2)
        return [y, u, flat[w * h + quarter :].reshape(h // 2, w // 2)]

    def close(self) -> None:
        """Unlink the ring (readers keep their mappings) and release it. Idempotent.

        Drop the views returned by begin() first, or the unmap waits for them to be garbage-collected.
        """
        self._open_slot = None
        self._views = ()
        self._finalizer()

    def __enter__(self) -> RingWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
