"""Where ReID and attribute crops come from, and the per-frame crop budget.

Frames are ``vap_shmring.images`` frames (a ring slot or a BGR array): crops are *copied* out of the slot
and the slot's generation is checked; if the decoder overwrote it meanwhile, the crops are discarded and
counted as stale, never embedded. The embedding itself runs later on the copies, so it can take as long as
it needs without holding the slot.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from vap_shmring.images import FrameImage

F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]


class CropBudgetStats(Protocol):
    crops_stale: int
    batches_skipped_busy: int


def budgeted_crops(
    candidates: list[tuple[Any, int, int]],
    boxes: F64,
    frame: FrameImage,
    *,
    max_crops: int,
    busy: bool,
    stats: CropBudgetStats,
) -> tuple[list[int], list[U8]] | None:
    """One batch of a per-frame crop budget (ReID, attributes): the track ids and crops of the ``max_crops``
    candidates (priority, row in ``boxes``, track id) that sort first. None when nothing is to be submitted:
    no candidates, ``busy`` (the caller's batches in flight are at their limit; counted as skipped) or the
    frame was overwritten while copying (counted as stale crops)."""
    if not candidates:
        return None
    if busy:
        stats.batches_skipped_busy += 1
        return None
    chosen = sorted(candidates)[:max_crops]
    crops = frame.crops(boxes[[k for _, k, _ in chosen]])
    if crops is None:
        stats.crops_stale += len(chosen)
        return None
    return [tid for _, _, tid in chosen], crops
