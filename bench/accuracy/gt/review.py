"""Human review of the draft identities, as data: ``review.yaml`` beside the ground truth says how the
offline tracker's draft becomes the ground truth, so every decision is written down and re-applied exactly.

Parts: a draft track can be cut at frames (``split: {7: [300]}`` makes parts ``7`` and ``7@300``). Then:
- ``drop``: parts that are no person (the sign, a poster, a double box) or that are wrong for a frame range
  (``{part: "5", from: 100, to: 140}``);
- ``persons``: each person's parts (``P1: ["1", "12", "33@300"]``), labelled with the hand counts' names
  where the person is one of theirs; parts named nowhere are dropped (and listed by ``check``);
- ``add``: boxes drawn by hand, as keyframes ``{person: {frame: [x1, y1, x2, y2]}}``, linear between
  keyframes up to 20 frames apart (further apart: separate single-frame fixes), over whatever the machine
  had there (a person walking behind another, a box the detector cut short);
- ``ignore``: frame ranges of a person that no detector can be asked to find (``{person, from, to}``);
  ``score`` the opposite, for spans the automatic rules would ignore.
Gaps between a person's boxes of up to ``max_gap`` frames are filled by linear interpolation; filled boxes
mostly covered by another person's box, and boxes lower than ``min_height`` px, are ignore-flagged.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from bench.accuracy.gt.motfile import GtBox
from vap_modelbuild.derive import iou_matrix

Box = tuple[float, float, float, float]
MAX_KEYFRAME_GAP = 20  # hand keyframes this close are one drawn path, interpolated between


@dataclass
class Review:
    split: dict[str, list[int]] = field(default_factory=dict)
    drop: list[Any] = field(default_factory=list)
    persons: dict[str, list[str]] = field(default_factory=dict)
    add: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    ignore: list[dict[str, Any]] = field(default_factory=list)
    score: list[dict[str, Any]] = field(default_factory=list)
    max_gap: int = 60
    frame_width: int = 768
    # A box at the left or right border narrower than this x its height shows less than half a person, who
    # is then not in the frame (the hand counts' rule: at least half the body inside).
    edge_min_aspect: float = 0.2
    min_height: float = 24.0
    occluded_fraction: float = 0.6

    @classmethod
    def load(cls, *paths: Path) -> Review:
        """Several files in order: lists add up, mappings merge (a later file's person gets more parts, a
        later file's split of the same track more cut points)."""
        data: dict[str, Any] = {}
        for path in paths:
            if not path.exists():
                continue
            for key, value in (yaml.safe_load(path.read_text()) or {}).items():
                if isinstance(value, list):
                    data[key] = [*data.get(key, []), *value]
                elif isinstance(value, dict):
                    merged = dict(data.get(key, {}))
                    for k, v in value.items():
                        merged[k] = (
                            [*merged.get(k, []), *v] if isinstance(v, list) else {**merged.get(k, {}), **v}
                        )
                    data[key] = merged
                else:
                    data[key] = value
        data["split"] = {str(k): [int(f) for f in v] for k, v in (data.get("split") or {}).items()}
        data["persons"] = {str(k): [str(p) for p in v] for k, v in (data.get("persons") or {}).items()}
        data["add"] = {
            str(k): {int(f): [float(c) for c in b] for f, b in v.items()}
            for k, v in (data.get("add") or {}).items()
        }
        return cls(**{k: v for k, v in data.items() if v is not None})


def _box(values: Any) -> Box:
    x1, y1, x2, y2 = (float(v) for v in values)
    return (x1, y1, x2, y2)


def _lerp(a: Any, b: Any, w: float) -> Box:
    return _box((1 - w) * np.asarray(a, np.float64) + w * np.asarray(b, np.float64))


def part_of(track: int, frame: int, split: dict[str, list[int]]) -> str:
    cuts = [c for c in split.get(str(track), []) if c <= frame]
    return f"{track}@{max(cuts)}" if cuts else str(track)


def _in(frame: int, rng: dict[str, Any]) -> bool:
    return int(rng.get("from", 0)) <= frame <= int(rng.get("to", 10**9))


def apply(
    draft: list[tuple[int, int, Box, bool]],
    review: Review,
    refine_with: dict[int, npt.NDArray[np.float64]] | None = None,
) -> tuple[list[GtBox], dict[int, str], list[str]]:
    """Ground-truth boxes, the label of each GT id, and the draft parts no person claims. ``refine_with``:
    per frame the boxes of a later, better pre-label pass (refine())."""
    parts: dict[str, dict[int, tuple[Box, bool]]] = defaultdict(dict)
    for frame, track, box, detected in draft:
        parts[part_of(track, frame, review.split)][frame] = (_box(box), detected)
    for rule in review.drop:
        if isinstance(rule, dict):
            p = parts.get(str(rule["part"]), {})
            for f in [f for f in p if _in(f, rule)]:
                del p[f]
        else:
            parts.pop(str(rule), None)
    owner = {p: person for person, ps in review.persons.items() for p in ps}
    unclaimed = sorted((p for p in parts if p not in owner and parts[p]), key=lambda s: (len(s), s))
    # person -> frame -> (box, observed)
    people: dict[str, dict[int, tuple[Box, bool]]] = defaultdict(dict)
    for part, boxes in parts.items():
        if part in owner:
            mine = people[owner[part]]
            for f, (box, detected) in boxes.items():
                # Two parts of one person in a frame: the detected box over an interpolated one, then the
                # taller (a head-and-shoulders box is the same person seen worse).
                if f not in mine or (detected, box[3] - box[1]) > (mine[f][1], mine[f][0][3] - mine[f][0][1]):
                    mine[f] = (box, detected)
    if refine_with is not None:
        people = defaultdict(dict, refine(people, refine_with))
    # Boxes drawn by hand are final: after the refinement, over whatever the machine had.
    for person, keys in review.add.items():
        frames = sorted(keys)
        for a, nxt in zip(frames, [*frames[1:], frames[-1]], strict=True):
            b = a if nxt - a > MAX_KEYFRAME_GAP else nxt  # further apart: separate single-frame fixes
            for f in range(a, b + 1) if b > a else [a]:
                w = 0.0 if b == a else (f - a) / (b - a)
                people[person][f] = (_lerp(keys[a], keys[b], w), True)
    # Fill gaps by interpolation.
    filled: dict[str, dict[int, tuple[Box, bool]]] = {}
    for person, boxes in people.items():
        frames = sorted(boxes)
        out = dict(boxes)
        for a, b in itertools.pairwise(frames):
            # Not across a gap that starts and ends at the left/right border: the person left the frame.
            border = all(boxes[k][0][0] <= 2 or boxes[k][0][2] >= review.frame_width - 2 for k in (a, b))
            if 1 < b - a <= review.max_gap and not border:
                for f in range(a + 1, b):
                    w = (f - a) / (b - a)
                    out[f] = (_lerp(boxes[a][0], boxes[b][0], w), False)
        filled[person] = out
    order = sorted(filled, key=lambda p: (min(filled[p]), p))
    ids = {person: i + 1 for i, person in enumerate(order)}
    by_frame: dict[int, list[tuple[str, Box, bool]]] = defaultdict(list)
    for person, boxes in filled.items():
        for f, (box, observed) in boxes.items():
            by_frame[f].append((person, box, observed))
    gt: list[GtBox] = []
    for f, items in by_frame.items():
        for person, box, observed in items:
            at_edge = box[0] <= 1 or box[2] >= review.frame_width - 1
            if at_edge and box[2] - box[0] < review.edge_min_aspect * (box[3] - box[1]):
                continue
            scored = box[3] - box[1] >= review.min_height
            if scored and not observed:
                scored = _covered(box, [b for p, b, _ in items if p != person]) < review.occluded_fraction
            if any(r["person"] == person and _in(f, r) for r in review.ignore):
                scored = False
            if any(r["person"] == person and _in(f, r) for r in review.score):
                scored = True
            gt.append(GtBox(f, ids[person], *box, scored=scored))
    return gt, {i: p for p, i in ids.items()}, unclaimed


def refine(
    people: dict[str, dict[int, tuple[Box, bool]]], boxes_by_frame: dict[int, npt.NDArray[np.float64]]
) -> dict[str, dict[int, tuple[Box, bool]]]:
    """Each person's boxes replaced by the matching box of a better pre-label pass (same frame, one to one,
    IoU >= 0.5): the identities stay as reviewed, the coordinates come from the better detector. Boxes with
    no match (interpolated through an occlusion, a box the better pass does not have) are dropped between
    two refined boxes of the person (the gap is interpolated again) and otherwise moved by the median
    shift of the matches. Hand-drawn boxes are applied after this, untouched."""
    from scipy.optimize import linear_sum_assignment

    by_frame: dict[int, list[tuple[str, Box]]] = defaultdict(list)
    for person, frames in people.items():
        for f, (box, _) in frames.items():
            by_frame[f].append((person, box))
    refined: dict[str, dict[int, tuple[Box, bool]]] = defaultdict(dict)
    shifts = []
    for f, items in by_frame.items():
        new = boxes_by_frame.get(f)
        if new is None or not len(new):
            continue
        old = np.array([b for _, b in items], np.float64)
        iou = iou_matrix(old, new[:, :4])
        for r, c in zip(*linear_sum_assignment(-iou), strict=True):
            if iou[r, c] >= 0.5:
                refined[items[r][0]][f] = (_box(new[c, :4]), True)
                shifts.append(new[c, :4] - old[r])
    shift = np.median(np.array(shifts), axis=0) if shifts else np.zeros(4)
    out: dict[str, dict[int, tuple[Box, bool]]] = {}
    for person, frames in people.items():
        mine = dict(refined.get(person, {}))
        known = sorted(mine)
        for f, (box, observed) in frames.items():
            if f in mine:
                continue
            inside = bool(known) and known[0] < f < known[-1]
            if not inside:  # no refined neighbour on both sides: keep it, moved like the matched boxes
                mine[f] = (_box(np.array(box) + shift), observed)
        out[person] = mine
    return out


def _covered(box: Box, others: list[Box]) -> float:
    """Fraction of ``box``'s area under the other boxes (a pixel grid: overlaps counted once)."""
    if not others:
        return 0.0
    x1, y1, x2, y2 = (round(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        return 0.0
    mask = np.zeros((y2 - y1, x2 - x1), bool)
    for ox1, oy1, ox2, oy2 in others:
        a, b = max(int(ox1) - x1, 0), max(int(oy1) - y1, 0)
        c, d = min(int(ox2) - x1, x2 - x1), min(int(oy2) - y1, y2 - y1)
        if c > a and d > b:
            mask[b:d, a:c] = True
    return float(mask.mean())
