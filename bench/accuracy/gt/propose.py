"""A first ``persons:`` mapping for review.yaml, for the reviewers to check and correct (never taken as is).

Seeds: the hand counts' boxes (frames 0, 100, ..., 700, each with its person's name) name the draft part
under them. The other parts go, longest first, to the named person whose parts do not overlap them in time
and whose look is nearest (mean appearance embedding of up to 10 crops: MobileNetV2 + colour, the same
embedder VAP's ReID uses), or become a new person X<n> when nobody is near enough. Conflicts (two seeds
naming one part, one person's parts overlapping) are printed for the reviewers.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.accuracy.gt.review import Review, part_of
from bench.accuracy.metrics import iou_matrix
from vap_tracker.reid.embedder import make_embedder

U8 = npt.NDArray[np.uint8]
Box = tuple[float, float, float, float]
MIN_SIMILARITY = 0.75
MAX_OVERLAP = 3  # frames two parts of one person may share (interpolated ends)


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    return float(iou_matrix([tuple(a)], [tuple(b)])[0, 0])


def propose(
    draft: list[tuple[int, int, Box, bool]], review: Review, frames: list[U8], groundtruth_dir: Path
) -> tuple[dict[str, list[str]], list[str]]:
    parts: dict[str, dict[int, Box]] = defaultdict(dict)
    for f, t, box, _ in draft:
        parts[part_of(t, f, review.split)][f] = box
    dropped = {str(d) for d in review.drop if not isinstance(d, dict)}
    parts = {k: v for k, v in parts.items() if k not in dropped}
    notes: list[str] = []
    owner: dict[str, str] = {}
    hand = json.loads((groundtruth_dir / "vtest576_counts.json").read_text())["frames"]
    for key, entry in hand.items():
        f = int(key)
        for box, person in zip(entry["boxes"], entry["person_ids"], strict=True):
            best = max(
                ((p, _iou(tuple(box), b[f])) for p, b in parts.items() if f in b),
                key=lambda x: x[1],
                default=None,
            )
            if best is None or best[1] < 0.3:
                notes.append(f"frame {f}: no draft part under {person} {box}")
                continue
            if owner.get(best[0], person) != person:
                notes.append(f"frame {f}: part {best[0]} is both {owner[best[0]]} and {person} (a swap?)")
                continue
            owner[best[0]] = person
    embedder = make_embedder("auto")
    look: dict[str, npt.NDArray[np.float32]] = {}
    for p, boxes in parts.items():
        picked = [sorted(boxes)[int(i)] for i in np.linspace(0, len(boxes) - 1, min(10, len(boxes)))]
        crops = []
        for f in picked:
            x1, y1, x2, y2 = (int(v) for v in boxes[f])
            crop = frames[f][max(0, y1) : max(y1 + 2, y2), max(0, x1) : max(x1 + 2, x2)]
            if crop.size:
                crops.append(np.ascontiguousarray(crop))
        vec = embedder.embed(crops).mean(axis=0)
        look[p] = vec / (np.linalg.norm(vec) + 1e-9)
    persons: dict[str, list[str]] = defaultdict(list)
    for p, person in owner.items():
        persons[person].append(p)

    def overlap(p: str, person: str) -> int:
        mine = set(parts[p])
        return max((len(mine & set(parts[q])) for q in persons[person]), default=0)

    new = 0
    for p in sorted((p for p in parts if p not in owner), key=lambda p: -len(parts[p])):
        candidates = [
            (float(np.mean([look[p] @ look[q] for q in qs])), person)
            for person, qs in persons.items()
            if overlap(p, person) <= MAX_OVERLAP
        ]
        nearest: tuple[float, str] | None = max(candidates, default=None)
        if nearest is not None and nearest[0] >= MIN_SIMILARITY:
            persons[nearest[1]].append(p)
        else:
            new += 1
            persons[f"X{new}"].append(p)
    for qs in persons.values():
        qs.sort(key=lambda q: min(parts[q]))
    return dict(persons), notes
