"""A synthetic crowd for the speed rows: N people walking in a 1920x1080 view, seen by a noisy detector.

Speed depends on how many boxes overlap and how many tracks are born and lost, so the scene is a plausible
one rather than N boxes on a grid: people 40-110 px wide (2.5x as tall) walk at 0.5-3 px per frame and
turn gently; one who leaves the view is replaced by a new one entering at a border. The detector misses
5 % of people, jitters each edge by 2 % of the box size, and adds a false positive every other frame.
"""

from __future__ import annotations

import numpy as np

from bench.tracking.noise import FrameDets

WIDTH, HEIGHT = 1920.0, 1080.0


def crowd(objects: int, frames: int, seed: int = 7) -> list[FrameDets]:
    rng = np.random.default_rng(seed)
    w = rng.uniform(40, 110, objects)
    xy = np.stack((rng.uniform(0, WIDTH, objects), rng.uniform(0, HEIGHT, objects)), axis=1)
    speed = rng.uniform(0.5, 3.0, objects)
    heading = rng.uniform(0, 2 * np.pi, objects)
    out: list[FrameDets] = []
    for _ in range(frames):
        heading += rng.normal(0.0, 0.05, objects)
        xy += np.stack((np.cos(heading), np.sin(heading)), axis=1) * speed[:, None]
        gone = (xy[:, 0] < -w) | (xy[:, 0] > WIDTH) | (xy[:, 1] < -2.5 * w) | (xy[:, 1] > HEIGHT)
        k = int(gone.sum())
        if k:
            # Re-enter from the left or right border, walking inwards.
            left = rng.random(k) < 0.5
            xy[gone, 0] = np.where(left, -w[gone] * 0.9, WIDTH - w[gone] * 0.1)
            xy[gone, 1] = rng.uniform(0, HEIGHT - 2.5 * w[gone])
            heading[gone] = np.where(left, 0.0, np.pi) + rng.normal(0, 0.3, k)
        boxes = np.concatenate((xy, xy + np.stack((w, 2.5 * w), axis=1)), axis=1)
        seen = rng.random(objects) >= 0.05
        boxes = boxes[seen]
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = boxes + rng.normal(0, 0.02, boxes.shape) * np.stack((bw, bh, bw, bh), axis=1)
        scores = np.where(
            rng.random(len(boxes)) < 0.1, rng.uniform(0.2, 0.6, len(boxes)), rng.uniform(0.6, 1, len(boxes))
        )
        if rng.random() < 0.5:
            fx, fy, fw = rng.uniform(0, WIDTH - 100), rng.uniform(0, HEIGHT - 250), rng.uniform(40, 100)
            boxes = np.concatenate((boxes, [[fx, fy, fx + fw, fy + 2.5 * fw]]))
            scores = np.concatenate((scores, [rng.uniform(0.1, 0.7)]))
        out.append(FrameDets(boxes, scores))
    return out
