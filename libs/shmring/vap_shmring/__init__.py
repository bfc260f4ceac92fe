"""vap_shmring: the zero-copy frame bus. One POSIX shared-memory ring of fixed-size frame slots per camera
channel; one writer (the channel's decoder), any number of readers in other processes.

- The writer fills slots round robin *in place* (``begin()`` gives writable numpy views of the slot's
  planes, a decoder converts straight into them) and ``commit()`` returns the small FrameRef that crosses
  NATS. It never waits for readers; live video overwrites the oldest slot.
- Readers attach by ring name and turn a FrameRef into read-only numpy views of the slot in about a
  microsecond, then ``check()`` that the writer did not overwrite the slot while they used it.
- Each slot has a seqlock-style generation (odd while written, even when committed): see writer.py and
  reader.py for the two halves of the protocol, fence.py for memory ordering on x86-64 and aarch64,
  layout.py for the byte layout, liveness.py for crashed-writer detection and cleanup.
"""

from vap_shmring.errors import (
    GeometryMismatchError,
    RingClosedError,
    RingExistsError,
    RingFormatError,
    RingMismatchError,
    RingNotFoundError,
    ShmRingError,
    SlotOutOfRangeError,
    StaleGenerationError,
    WriterStateError,
)
from vap_shmring.fence import FENCE_KIND
from vap_shmring.geometry import FrameGeometry, PlaneLayout, compute_geometry
from vap_shmring.liveness import cleanup_stale_rings, find_stale_rings, writer_alive
from vap_shmring.naming import RING_PREFIX, SHM_DIR, ring_name
from vap_shmring.pool import ReaderPool
from vap_shmring.reader import RingReader
from vap_shmring.views import FrameView
from vap_shmring.writer import RingWriter

__all__ = [
    "FENCE_KIND",
    "RING_PREFIX",
    "SHM_DIR",
    "FrameGeometry",
    "FrameView",
    "GeometryMismatchError",
    "PlaneLayout",
    "ReaderPool",
    "RingClosedError",
    "RingExistsError",
    "RingFormatError",
    "RingMismatchError",
    "RingNotFoundError",
    "RingReader",
    "RingWriter",
    "ShmRingError",
    "SlotOutOfRangeError",
    "StaleGenerationError",
    "WriterStateError",
    "cleanup_stale_rings",
    "compute_geometry",
    "find_stale_rings",
    "ring_name",
    "writer_alive",
]
