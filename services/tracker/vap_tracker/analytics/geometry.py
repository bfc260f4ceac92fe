"""Anchor points, sides of a line and point-in-polygon, vectorised over the tracks of a frame."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vap_proto.v1 import analytics_pb2

F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]


def anchor_points(boxes: F64, anchor: int) -> F64:
    """(K, 2) points of (K, 4) boxes: bottom centre (default), centre or top centre."""
    x = (boxes[:, 0] + boxes[:, 2]) * 0.5
    if anchor == analytics_pb2.ANCHOR_POINT_CENTER:
        y = (boxes[:, 1] + boxes[:, 3]) * 0.5
    elif anchor == analytics_pb2.ANCHOR_POINT_TOP_CENTER:
        y = boxes[:, 1]
    else:  # UNSPECIFIED and BOTTOM_CENTER: where a person stands
        y = boxes[:, 3]
    return np.stack((x, y), axis=1)


def signed_distance(points: F64, p1: F64, p2: F64) -> F64:
    """Distance of each point from the infinite line p1 -> p2: positive on side B (right of the directed
    segment on screen, y pointing down; below a line drawn left to right), negative on side A."""
    d = p2 - p1
    length = float(np.hypot(d[0], d[1]))
    if length == 0.0:
        return np.zeros(len(points))
    out: F64 = (d[0] * (points[:, 1] - p1[1]) - d[1] * (points[:, 0] - p1[0])) / length
    return out


def crosses_segment(a: F64, b: F64, p1: F64, p2: F64) -> bool:
    """Whether the movement a -> b (on opposite sides of the line) passes through the segment p1-p2 itself
    rather than beside one of its ends."""
    d = p2 - p1
    m = b - a
    denom = m[0] * d[1] - m[1] * d[0]
    if denom == 0.0:
        return False
    # Parameter along p1 -> p2 of the intersection with the line through a and b.
    t = ((a[0] - p1[0]) * m[1] - (a[1] - p1[1]) * m[0]) / -denom
    return bool(-1e-9 <= t <= 1.0 + 1e-9)


def points_in_polygon(points: F64, polygon: F64) -> Bool:
    """Even-odd rule for (K, 2) points against a (V, 2) polygon (implicitly closed)."""
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    x, y = points[:, 0:1], points[:, 1:2]
    x1, y1 = polygon[:, 0][None, :], polygon[:, 1][None, :]
    x2, y2 = np.roll(polygon[:, 0], -1)[None, :], np.roll(polygon[:, 1], -1)[None, :]
    straddles = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    hits = straddles & (x < x_cross)
    inside: Bool = (hits.sum(axis=1) % 2) == 1
    return inside
