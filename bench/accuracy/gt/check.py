"""The ground truth against the independent hand counts in shared/data/groundtruth (their README):
people per frame at frames 0, 100, ..., 700 (boxes matched by IoU) and every crossing of lines L2 and L4
(same line, direction and person, frame within +-6)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from bench.accuracy.crossings import Crossing, Line, anchor, track_crossings
from bench.accuracy.gt.motfile import GtBox
from bench.accuracy.metrics import iou_matrix

WIDTH, HEIGHT = 768, 576
DIRECTIONS = {"L2": {"-x": "a_to_b", "+x": "b_to_a"}, "L4": {"+y": "a_to_b", "-y": "b_to_a"}}
FRAME_TOLERANCE = 6


@dataclass
class CheckResult:
    count_rows: list[str] = field(default_factory=list)
    crossing_rows: list[str] = field(default_factory=list)
    count_mismatches: int = 0
    crossing_mismatches: int = 0

    @property
    def ok(self) -> bool:
        return self.count_mismatches == 0 and self.crossing_mismatches == 0


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    return float(iou_matrix([tuple(a)], [tuple(b)])[0, 0])


def hand_lines(groundtruth_dir: Path) -> list[Line]:
    data = json.loads((groundtruth_dir / "vtest576_lines.json").read_text())
    out = []
    for name, line in data["lines"].items():
        (x1, y1), (x2, y2) = line["points"]
        out.append(Line(name, (x1 * WIDTH, y1 * HEIGHT), (x2 * WIDTH, y2 * HEIGHT)))
    return out


def gt_crossings(gt: list[GtBox], lines: list[Line]) -> list[Crossing]:
    tracks: dict[int, list[tuple[int, tuple[float, float]]]] = defaultdict(list)
    for b in sorted(gt, key=lambda b: b.frame):
        tracks[b.id].append((b.frame, anchor(b.box)))
    return [c for line in lines for tid, pts in tracks.items() for c in track_crossings(tid, pts, line)]


def check(gt: list[GtBox], labels: dict[int, str], groundtruth_dir: Path) -> CheckResult:
    result = CheckResult()
    counts = json.loads((groundtruth_dir / "vtest576_counts.json").read_text())["frames"]
    by_frame: dict[int, list[GtBox]] = defaultdict(list)
    for b in gt:
        by_frame[b.frame].append(b)
    for key, hand in sorted(counts.items(), key=lambda kv: int(kv[0])):
        frame = int(key)
        ours = by_frame[frame]
        iou = np.array([[_iou(h, b.box) for b in ours] for h in hand["boxes"]]).reshape(
            len(hand["boxes"]), len(ours)
        )
        rows, cols = linear_sum_assignment(-iou) if iou.size else ([], [])
        pairs = [(r, c) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= 0.3]
        wrong_person = [
            (hand["person_ids"][r], labels[ours[c].id])
            for r, c in pairs
            if labels[ours[c].id] != hand["person_ids"][r]
        ]
        missing = [hand["person_ids"][r] for r in range(len(hand["boxes"])) if r not in {p[0] for p in pairs}]
        extra = [labels[ours[c].id] for c in range(len(ours)) if c not in {p[1] for p in pairs}]
        lo = int(hand.get("count_min", hand["count"]))
        # count_min: people the hand counts themselves call optional (a head behind a car) may be missing.
        ok = (
            lo <= len(ours) <= int(hand["count"])
            and len(missing) <= int(hand["count"]) - lo
            and not wrong_person
        )
        result.count_mismatches += not ok
        result.count_rows.append(
            f"frame {frame:3d}: hand {hand['count']} (min {lo}), gt {len(ours)} "
            f"({sum(b.scored for b in ours)} scored)"
            + (f"; missing {missing}" if missing else "")
            + (f"; extra {extra}" if extra else "")
            + (f"; other person {wrong_person}" if wrong_person else "")
            + ("" if ok else "  <-- differs")
        )
    lines_data = json.loads((groundtruth_dir / "vtest576_lines.json").read_text())["lines"]
    ours_all = gt_crossings(gt, hand_lines(groundtruth_dir))
    for name, line in lines_data.items():
        want = [(c["frame"], DIRECTIONS[name][c["dir"]], c["person"]) for c in line["crossings"]]
        have = [(c.frame, c.direction, labels[c.track]) for c in ours_all if c.line == name]
        unmatched_have = list(have)
        missing_c = []
        for frame, direction, person in want:
            hit = next(
                (
                    h
                    for h in unmatched_have
                    if h[1] == direction and h[2] == person and abs(h[0] - frame) <= FRAME_TOLERANCE
                ),
                None,
            )
            if hit is None:
                missing_c.append((frame, direction, person))
            else:
                unmatched_have.remove(hit)
        result.crossing_mismatches += len(missing_c) + len(unmatched_have)
        result.crossing_rows.append(
            f"{name}: hand {len(want)}, gt {len(have)}; "
            f"missing {missing_c or 'none'}; extra {unmatched_have or 'none'}"
        )
    return result
