"""The reader side: attach to a ring by name and turn FrameRefs into zero-copy, read-only numpy views.

Seqlock protocol, reader half::

    view(ref):   g1 = gen[slot]; g1 must equal ref.generation (even)   else StaleGenerationError
                 reader_fence()                                         pixel loads happen after the g1 load
                 -> the slot's precomputed read-only views
    ... use the pixels (preprocess, copy to the GPU, ...) ...
    check(ref):  reader_fence()                                         pixel loads happen before the g2 load
                 g2 = gen[slot]; g2 must still equal ref.generation     else StaleGenerationError

If check() raises, the writer began rewriting the slot while the pixels were used: whatever was computed
from them may be torn and must be discarded. Both failures count in ``stale_reads``. No lock, no write to
shared memory: readers are invisible to the writer, and any number of them can read the same slot.

Cost: view() and check() are a handful of attribute reads, integer compares and a tuple index (about
1-3 us, independent of frame size); nothing is allocated per frame.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import TYPE_CHECKING

from vap_proto.v1.frame_pb2 import FrameRef, PixelFormat
from vap_shmring.errors import (
    GeometryMismatchError,
    RingClosedError,
    RingFormatError,
    RingMismatchError,
    SlotOutOfRangeError,
    StaleGenerationError,
)
from vap_shmring.fence import reader_fence
from vap_shmring.geometry import FrameGeometry, compute_geometry
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
    WRITER_STATE_WORD,
    Header,
)
from vap_shmring.liveness import writer_alive
from vap_shmring.mapping import RingMapping
from vap_shmring.naming import SHM_DIR
from vap_shmring.segment import map_segment
from vap_shmring.views import FrameView

if TYPE_CHECKING:
    from vap_shmring.pool import ReaderPool

_LATEST_TRIES = 3


class RingReader:
    """A read-only attachment to one ring. Cheap to keep open for the life of the process."""

    def __init__(self, name: str, header: Header, mapping: RingMapping, inode: int, shm_dir: str) -> None:
        self.name = name
        self.header = header
        self.inode = inode
        self.channel_id = header.channel_id
        self.slot_count = header.slot_count
        self.geometry: FrameGeometry = mapping.geometry
        if self.geometry.strides != header.strides or self.geometry.plane_offsets != header.plane_offsets:
            raise RingFormatError(f"{name!r}: header plane layout disagrees with its own geometry")
        self.stale_reads = 0  # views refused or checks failed because the writer overwrote the slot
        self.reads = 0  # views handed out
        self._shm_dir = shm_dir
        self._mapping: RingMapping | None = mapping
        self._gens = mapping.ctl_u
        self._views = mapping.views
        g = self.geometry
        self._geometry_key = (g.width, g.height, int(g.pixel_format))
        self._strides = list(g.strides)
        self._offsets = list(g.plane_offsets)
        reader_fence()

    @classmethod
    def attach(cls, name: str, *, shm_dir: str = SHM_DIR) -> RingReader:
        """Map the ring ``name`` (a FrameRef's ``ring``) read-only; raises RingNotFoundError."""
        header, buf, inode = map_segment(shm_dir, name)
        try:
            mapping = RingMapping(buf, header, geometry_of(header))
        except BaseException:
            buf.close()
            raise
        return cls(name, header, mapping, inode, shm_dir)

    # --- the per-frame path ---------------------------------------------------------------------------

    def _validate(self, ref: FrameRef) -> int:
        """The ref's slot index, after checking that the ref fits this ring."""
        if self._mapping is None:
            raise RingClosedError(f"reader of {self.name!r} is closed")
        if ref.ring != self.name:
            raise RingMismatchError(f"FrameRef for ring {ref.ring!r} given to the reader of {self.name!r}")
        slot = ref.slot
        if slot >= self.slot_count:
            raise SlotOutOfRangeError(f"{self.name!r}: slot {slot} >= slot count {self.slot_count}")
        if (
            (ref.width, ref.height, ref.pixel_format) != self._geometry_key
            or ref.strides != self._strides
            or ref.plane_offsets != self._offsets
        ):
            raise GeometryMismatchError(
                f"{self.name!r}: FrameRef says {ref.width}x{ref.height} format {ref.pixel_format} strides "
                f"{list(ref.strides)} offsets {list(ref.plane_offsets)}, ring has {self.geometry}"
            )
        return slot

    def _stale(self, ref: FrameRef, slot: int, found: int) -> StaleGenerationError:
        self.stale_reads += 1
        return StaleGenerationError(self.name, slot, ref.generation, found)

    def view(self, ref: FrameRef) -> FrameView:
        """Read-only views of the frame ``ref`` points to; call check(ref) after using them."""
        slot = self._validate(ref)
        found = self._gens[slot * CTL_WORDS + CTL_GENERATION]
        if found != ref.generation or found & 1:
            raise self._stale(ref, slot, found)
        reader_fence()
        self.reads += 1
        return self._views[slot]

    def check(self, ref: FrameRef) -> None:
        """Raise StaleGenerationError if the slot was overwritten since ``ref`` was committed.

        Call after the last use of the views (after the copy/preprocess), not just after view(). Only the
        generation is compared (view() validated the rest); a ref of another ring never matches, since
        generations start at the ring's creation time.
        """
        slot = ref.slot
        if slot >= self.slot_count:
            raise SlotOutOfRangeError(f"{self.name!r}: slot {slot} >= slot count {self.slot_count}")
        reader_fence()
        try:
            found = self._gens[slot * CTL_WORDS + CTL_GENERATION]
        except ValueError:  # our memoryview was released by close()
            raise RingClosedError(f"reader of {self.name!r} is closed") from None
        if found != ref.generation:
            raise self._stale(ref, slot, found)

    def is_current(self, ref: FrameRef) -> bool:
        """Whether the slot still holds ``ref``'s frame (no exception, not counted)."""
        slot = self._validate(ref)
        reader_fence()
        return bool(self._gens[slot * CTL_WORDS + CTL_GENERATION] == ref.generation)

    def read(self, ref: FrameRef) -> ReadGuard:
        """``with reader.read(ref) as frame:`` view on entry, check on a normal exit (raises if torn)."""
        return ReadGuard(self, ref)

    # --- inspection ------------------------------------------------------------------------------------

    def generation(self, slot: int) -> int:
        """The slot's current generation (odd while the writer fills it)."""
        if not 0 <= slot < self.slot_count:
            raise SlotOutOfRangeError(f"{self.name!r}: slot {slot} out of range")
        if self._mapping is None:
            raise RingClosedError(f"reader of {self.name!r} is closed")
        return int(self._gens[slot * CTL_WORDS + CTL_GENERATION])

    def latest(self) -> FrameRef | None:
        """A FrameRef for the most recently committed frame, or None (nothing committed yet, or the writer
        kept overwriting it while we looked). scenario_id is not stored in the ring and is left empty."""
        if self._mapping is None:
            raise RingClosedError(f"reader of {self.name!r} is closed")
        words, ctl_u, ctl_s = self._mapping.header_words, self._mapping.ctl_u, self._mapping.ctl_s
        base = self.header.generation_base
        for _ in range(_LATEST_TRIES):
            n = words[LATEST_WORD]
            if n == 0:
                return None
            index = n - 1
            slot = index % self.slot_count
            generation = base + 2 * index + 2
            line = slot * CTL_WORDS
            reader_fence()
            if ctl_u[line + CTL_GENERATION] != generation:
                continue
            reader_fence()
            meta = (ctl_u[line + CTL_SEQUENCE], ctl_s[line + CTL_PTS], ctl_s[line + CTL_CAPTURE])
            commit_ns, epoch = ctl_s[line + CTL_COMMIT], ctl_u[line + CTL_EPOCH]
            reader_fence()
            if ctl_u[line + CTL_GENERATION] != generation:
                continue  # the metadata may be torn
            g = self.geometry
            return FrameRef(
                ring=self.name,
                slot=slot,
                generation=generation,
                width=g.width,
                height=g.height,
                pixel_format=g.pixel_format,
                strides=g.strides,
                plane_offsets=g.plane_offsets,
                channel_id=self.channel_id,
                sequence=meta[0],
                pts_us=meta[1],
                capture_time_ns=meta[2],
                commit_time_ns=commit_ns,
                stream_epoch=epoch,
            )
        return None

    @property
    def writer_closed(self) -> bool:
        """True once the writer closed the ring cleanly (a crashed writer never sets it)."""
        if self._mapping is None:
            raise RingClosedError(f"reader of {self.name!r} is closed")
        return bool(self._mapping.header_words[WRITER_STATE_WORD] == WRITER_CLOSED)

    def writer_alive(self) -> bool:
        """True while this ring's writer process holds it (a syscall or two; not for the per-frame path)."""
        return writer_alive(self.name, self._shm_dir) and self.is_same_segment()

    def is_same_segment(self) -> bool:
        """Whether the name still refers to the segment this reader mapped (False after the ring was
        removed or re-created by a new writer)."""
        try:
            return os.stat(os.path.join(self._shm_dir, self.name), follow_symlinks=False).st_ino == self.inode
        except FileNotFoundError:
            return False

    @property
    def closed(self) -> bool:
        return self._mapping is None

    def close(self) -> None:
        """Unmap. Safe to call with views still alive: the unmap then waits for them (see views.py)."""
        mapping, self._mapping = self._mapping, None
        self._views = ()
        if mapping is not None:
            mapping.release()

    def __enter__(self) -> RingReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ReadGuard:
    """Context manager of RingReader.read(): view() on entry, check() when the block ends normally.

    When the block raises, the check is skipped and the block's exception propagates unchanged.
    """

    __slots__ = ("_reader", "_ref")

    def __init__(self, reader: RingReader | ReaderPool, ref: FrameRef) -> None:
        self._reader = reader
        self._ref = ref

    def __enter__(self) -> FrameView:
        return self._reader.view(self._ref)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self._reader.check(self._ref)


def geometry_of(header: Header) -> FrameGeometry:
    """The plane layout a header describes (recomputed, then cross-checked against the stored one)."""
    try:
        return compute_geometry(
            header.width, header.height, PixelFormat.ValueType(header.pixel_format), header.row_align
        )
    except ValueError as e:
        raise RingFormatError(f"ring header holds an impossible geometry: {e}") from e
