"""Readers of many rings behind one object, for consumers that take FrameRefs from every channel.

Attaches to a ring the first time a FrameRef names it, and re-attaches when the ring was re-created by a
restarted decoder (same name, new segment). A ref of the new ring never matches a slot of the old mapping
(generations start at the creation time, see layout.py), so it shows up as a stale read (or a geometry
mismatch when the new ring has another size); only then, not per frame, the pool stats the name and
re-attaches when it points to another segment.
"""

from __future__ import annotations

from types import TracebackType

from vap_proto.v1.frame_pb2 import FrameRef
from vap_shmring.errors import GeometryMismatchError, StaleGenerationError
from vap_shmring.naming import SHM_DIR
from vap_shmring.reader import ReadGuard, RingReader
from vap_shmring.views import FrameView


class ReaderPool:
    def __init__(self, *, shm_dir: str = SHM_DIR) -> None:
        self._shm_dir = shm_dir
        self._readers: dict[str, RingReader] = {}
        self._stale_closed = 0  # stale reads of readers already dropped

    def reader(self, name: str) -> RingReader:
        """The attached reader of ring ``name`` (attaching now if needed)."""
        reader = self._readers.get(name)
        if reader is None:
            reader = self._readers[name] = RingReader.attach(name, shm_dir=self._shm_dir)
        return reader

    def view(self, ref: FrameRef) -> FrameView:
        reader = self.reader(ref.ring)
        try:
            return reader.view(ref)
        except (StaleGenerationError, GeometryMismatchError) as e:
            if reader.is_same_segment():
                raise
            # The name now points at a new segment (a restarted writer): the ref is probably for that one.
            if isinstance(e, StaleGenerationError):
                reader.stale_reads -= 1  # not a stale read, only an outdated mapping
            self.forget(ref.ring)
            return self.reader(ref.ring).view(ref)

    def check(self, ref: FrameRef) -> None:
        self.reader(ref.ring).check(ref)

    def read(self, ref: FrameRef) -> ReadGuard:
        """``with pool.read(ref) as frame:`` as RingReader.read, for any ring."""
        return ReadGuard(self, ref)

    @property
    def stale_reads(self) -> int:
        return self._stale_closed + sum(r.stale_reads for r in self._readers.values())

    def forget(self, name: str) -> None:
        """Close and drop the reader of ``name`` (e.g. when its channel is removed)."""
        reader = self._readers.pop(name, None)
        if reader is not None:
            self._stale_closed += reader.stale_reads
            reader.close()

    def close(self) -> None:
        for name in list(self._readers):
            self.forget(name)

    def __enter__(self) -> ReaderPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
