"""Test helpers for code that writes or reads rings: frame contents derived from the sequence number, so a
reader can tell from a FrameRef alone what the slot must contain (and whether what it read is torn)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vap_shmring.views import FrameView


def seq_value(sequence: int) -> int:
    """One byte per frame, uniform over the whole frame (cheap to write in a tight loop, and any mix of two
    frames is visible as two different values)."""
    return sequence % 251


def fill_uniform(view: FrameView, sequence: int) -> None:
    for plane in view.planes:
        plane.fill(seq_value(sequence))


def uniform_ok(view: FrameView, sequence: int) -> bool:
    """True when every byte of every plane carries this frame's value (not torn)."""
    value = seq_value(sequence)
    return all(int(p.min()) == value == int(p.max()) for p in view.planes)


def rich_planes(view: FrameView, sequence: int) -> list[npt.NDArray[np.uint8]]:
    """Content that differs per frame, plane, row and column: catches wrong strides and offsets."""
    out = []
    for index, plane in enumerate(view.planes):
        grid = np.indices(plane.shape, dtype=np.int64).sum(axis=0) * 7
        out.append(((grid + sequence * 13 + index * 101) % 256).astype(np.uint8))
    return out


def rich_ok(view: FrameView, sequence: int) -> bool:
    return all(np.array_equal(p, e) for p, e in zip(view.planes, rich_planes(view, sequence), strict=True))
