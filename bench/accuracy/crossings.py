"""Line crossings of ground-truth tracks, written independently of VAP's tracker (the thing under test).

Rule, as the hand counts in shared/data/groundtruth define it: the anchor (bottom centre of the box by
default) must move from one side of the line *segment* to the other, its path crossing the segment between
its end points, and settle on the new side: a side is taken only once the anchor is at least ``band``
pixels from the line, so touching the line and turning back counts nothing. A person who crosses and later
crosses back counts once per crossing. Directions use analytics.proto's convention: side B is the right of
p1 -> p2 on screen (y down); ``a_to_b`` is a move from side A to side B.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Point = tuple[float, float]


@dataclass(frozen=True)
class Line:
    id: str
    p1: Point  # pixels
    p2: Point


@dataclass(frozen=True)
class Crossing:
    line: str
    track: int
    frame: int  # the first frame on the new side
    direction: str  # "a_to_b" | "b_to_a"


def side_distance(point: Point, line: Line) -> float:
    """Signed distance from the infinite line: > 0 on side B (right of p1 -> p2, y down)."""
    (x1, y1), (x2, y2) = line.p1, line.p2
    dx, dy = x2 - x1, y2 - y1
    length = float(np.hypot(dx, dy)) or 1.0
    return (dx * (point[1] - y1) - dy * (point[0] - x1)) / length


def _segments_intersect(a: Point, b: Point, p: Point, q: Point) -> bool:
    def cross(o: Point, u: Point, v: Point) -> float:
        return (u[0] - o[0]) * (v[1] - o[1]) - (u[1] - o[1]) * (v[0] - o[0])

    d1, d2 = cross(p, q, a), cross(p, q, b)
    d3, d4 = cross(a, b, p), cross(a, b, q)
    return (d1 * d2 <= 0) and (d3 * d4 <= 0)


def track_crossings(
    track: int, points: list[tuple[int, Point]], line: Line, band: float = 4.0, settle: int = 8
) -> list[Crossing]:
    """Crossings of one track, its anchor points given by frame (ascending, gaps allowed).

    A side is firm ``band`` pixels away from the line. The track changes side when ``settle`` points in a row
    are firm on the other side (or the track ends there, half that many points in or clearly away from the
    line: a person who crosses and leaves stays on the new side); the crossing is counted at the first of
    them if the move from the last firm point on the old side to it passes through the segment."""
    out: list[Crossing] = []
    side = 0
    last_old: Point | None = None
    since_old: list[tuple[int, float]] = []  # (frame, signed distance) of the points after last_old
    run: list[tuple[int, Point]] = []

    def settle_run() -> None:
        nonlocal side, last_old, run, since_old
        assert last_old is not None
        if _segments_intersect(last_old, run[0][1], line.p1, line.p2):
            # The frame the anchor first stood on the new side, band or not: when the foot crossed.
            frame0 = next(f for f, d in since_old if d * side < 0)
            out.append(Crossing(line.id, track, frame0, "a_to_b" if side < 0 else "b_to_a"))
        side, last_old, run, since_old = -side, run[-1][1], [], []

    for frame, point in points:
        d = side_distance(point, line)
        since_old.append((frame, d))
        if abs(d) < band:
            continue  # on the line: neither side, and no break of a run
        s = 1 if d > 0 else -1
        if side in (0, s):
            side, last_old, run, since_old = s, point, [], []
            continue
        run.append((frame, point))
        if len(run) >= settle:
            settle_run()
    # The track ends on the other side: a person who crossed and left, unless it is one step of jitter.
    if run and (len(run) >= settle // 2 or abs(side_distance(run[-1][1], line)) >= 2 * band):
        settle_run()
    return out


def anchor(box: tuple[float, float, float, float], where: str = "bottom") -> Point:
    x1, y1, x2, y2 = box
    y = {"bottom": y2, "center": (y1 + y2) / 2, "top": y1}[where]
    return ((x1 + x2) / 2, y)
