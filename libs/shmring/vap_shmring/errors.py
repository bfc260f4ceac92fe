"""Exceptions raised by the ring; every one derives from :class:`ShmRingError`.

Readers tell the cases apart by class: a stale generation is normal under load (discard the frame and
count it), a geometry mismatch or a missing ring is a configuration or lifecycle problem.
"""

from __future__ import annotations


class ShmRingError(Exception):
    """Base class of every error raised by vap_shmring."""


class RingNotFoundError(ShmRingError):
    """No ring of that name exists (never created, or its writer closed or was cleaned up)."""


class RingExistsError(ShmRingError):
    """A ring of that name is owned by a writer that is still alive."""

    def __init__(self, name: str, writer_pid: int) -> None:
        super().__init__(f"ring {name!r} is owned by a live writer (pid {writer_pid})")
        self.name = name
        self.writer_pid = writer_pid


class RingFormatError(ShmRingError):
    """The segment is not a ring of this layout version (bad magic, version, or truncated)."""


class RingClosedError(ShmRingError):
    """The writer or reader object was used after close()."""


class RingMismatchError(ShmRingError):
    """A FrameRef names a different ring than the reader it was given to."""


class SlotOutOfRangeError(ShmRingError):
    """A FrameRef's slot index is not below the ring's slot count."""


class GeometryMismatchError(ShmRingError):
    """A FrameRef describes a geometry (size, pixel format, strides, plane offsets) the ring doesn't have."""


class StaleGenerationError(ShmRingError):
    """The slot no longer holds the frame the FrameRef was issued for: the writer overwrote it.

    Raised by ``view`` when the slot was already rewritten (or is being rewritten) and by ``check`` when it
    was rewritten while the reader used its views; whatever was read must be discarded.
    """

    def __init__(self, ring: str, slot: int, expected: int, found: int) -> None:
        super().__init__(f"ring {ring!r} slot {slot}: generation {found}, frame was {expected}")
        self.ring = ring
        self.slot = slot
        self.expected = expected
        self.found = found


class WriterStateError(ShmRingError):
    """begin()/commit()/abort() called out of order (the writer is single-threaded and sequential)."""
