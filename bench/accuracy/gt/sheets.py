"""Contact sheets for the reviewers: frames with every box and id drawn, and each identity's crops in a row.

PNG files a person (or the file viewer of a coding agent) looks at: ``frames_<first>.png`` shows four frames
of the stride in a 2x2 grid, ``ids_<n>.png`` shows up to ten identities, each as a row of crops spread over
its life with the frame number under each crop (a swap shows as a different person in one row).
"""

from __future__ import annotations

import colorsys
import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from bench.accuracy.crossings import Line

U8 = npt.NDArray[np.uint8]
# (frame, label, box, solid): solid = observed or scored; dashed-looking thin boxes otherwise.
Item = tuple[int, str, tuple[float, float, float, float], bool]


def colour(label: str) -> tuple[int, int, int]:
    h = (zlib.crc32(label.encode()) % 997) / 997.0  # the same colour every run (hash() is salted)
    r, g, b = colorsys.hsv_to_rgb(h, 0.9, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


def crop_cell(image: U8, box: Sequence[float], height: int, width: int, caption: str, fill: int = 0) -> U8:
    """The box's crop scaled into a height x width cell (aspect kept), ``caption`` under it."""
    x1, y1, x2, y2 = (int(v) for v in box)
    crop = image[max(0, y1) : max(y1 + 1, y2), max(0, x1) : max(x1 + 1, x2)]
    cell = np.full((height + 14, width, 3), fill, np.uint8)
    if crop.size:
        scale = min(height / crop.shape[0], width / crop.shape[1])
        size = (max(1, int(crop.shape[1] * scale)), max(1, int(crop.shape[0] * scale)))
        resized = cv2.resize(crop, size)
        cell[: resized.shape[0], : resized.shape[1]] = resized
    cv2.putText(cell, caption, (2, height + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1)
    return cell


def draw_frame(image: U8, items: Sequence[Item], lines: Sequence[Line], title: str) -> U8:
    out = image.copy()
    for line in lines:
        p1 = tuple(int(v) for v in line.p1)
        p2 = tuple(int(v) for v in line.p2)
        cv2.line(out, p1, p2, (0, 255, 255), 1, cv2.LINE_AA)
        cv2.putText(out, line.id, (p1[0] + 3, p1[1] + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1)
    for _, label, (x1, y1, x2, y2), solid in items:
        c = colour(label)
        cv2.rectangle(out, (int(x1), int(y1)), (int(x2), int(y2)), c, 2 if solid else 1)
        cv2.putText(
            out, label, (int(x1), max(10, int(y1) - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, c, 1, cv2.LINE_AA
        )
    cv2.putText(out, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
    return out


def frame_sheets(
    frames: Sequence[U8],
    items: Sequence[Item],
    lines: Sequence[Line],
    stride: int,
    out_dir: Path,
    *,
    start: int = 0,
) -> list[Path]:
    by_frame: dict[int, list[Item]] = defaultdict(list)
    for item in items:
        by_frame[item[0]].append(item)
    picked = list(range(start, len(frames), stride))
    paths = []
    for k in range(0, len(picked), 4):
        group = picked[k : k + 4]
        tiles = [draw_frame(frames[f], by_frame[f], lines, f"frame {f}  n={len(by_frame[f])}") for f in group]
        while len(tiles) < 4:
            tiles.append(np.zeros_like(tiles[0]))
        sheet = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])
        path = out_dir / f"frames_{group[0]:03d}.png"
        cv2.imwrite(str(path), sheet)
        paths.append(path)
    return paths


def identity_sheets(
    frames: Sequence[U8], items: Sequence[Item], out_dir: Path, *, per_row: int = 16, rows: int = 12
) -> list[Path]:
    by_label: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_label[item[1]].append(item)
    # Grouped by the label's person ("P1/12" -> "P1"), then by first frame: one person's parts in a block.
    labels = sorted(by_label, key=lambda s: (s.split("/")[0], min(i[0] for i in by_label[s])))
    height, width = 110, 60
    paths = []
    for k in range(0, len(labels), rows):
        strips = []
        for label in labels[k : k + rows]:
            life = sorted(by_label[label])
            picks = [life[int(j)] for j in np.linspace(0, len(life) - 1, min(per_row, len(life)))]
            cells = [np.full((height + 14, 90, 3), 40, np.uint8)]
            cv2.putText(cells[0], label, (4, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.55, colour(label), 2)
            cv2.putText(
                cells[0],
                f"{life[0][0]}-{life[-1][0]}",
                (2, 70),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.35,
                (255, 255, 255),
                1,
            )
            for f, _, box, solid in picks:
                cells.append(crop_cell(frames[f], box, height, width, str(f), 0 if solid else 80))
            while len(cells) < per_row + 1:
                cells.append(np.zeros((height + 14, width, 3), np.uint8))
            strips.append(np.hstack(cells))
        path = out_dir / f"ids_{k // rows:02d}.png"
        cv2.imwrite(str(path), np.vstack(strips))
        paths.append(path)
    return paths


def person_gallery(frames: Sequence[U8], hand: dict[str, dict[str, object]], out: Path) -> Path:
    """The hand counts' people: every box they drew (frames 0, 100, ...), one row per person name."""
    rows: dict[str, list[tuple[int, list[float]]]] = defaultdict(list)
    for key, entry in hand.items():
        for box, person in zip(entry["boxes"], entry["person_ids"], strict=True):  # type: ignore[call-overload]
            rows[str(person)].append((int(key), box))
    height, width = 130, 70
    strips = []
    for person in sorted(rows):
        cells = [np.full((height + 14, 70, 3), 40, np.uint8)]
        cv2.putText(cells[0], person, (4, 60), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
        for f, box in rows[person]:
            cells.append(crop_cell(frames[f], box, height, width, str(f)))
        while len(cells) < 9:
            cells.append(np.zeros((height + 14, width, 3), np.uint8))
        strips.append(np.hstack(cells))
    cv2.imwrite(str(out), np.vstack(strips))
    return out


def part_strip(
    frames: Sequence[U8], boxes: dict[int, tuple[float, float, float, float]], out: Path, step: int = 3
) -> Path:
    """Every ``step``-th box of one draft part, 20 crops a row, frame number under each."""
    height, width, per_row = 100, 54, 20
    picks = sorted(boxes)[::step]
    cells = []
    for f in picks:
        cells.append(crop_cell(frames[f], boxes[f], height, width, str(f)))
    while len(cells) % per_row:
        cells.append(np.zeros((height + 14, width, 3), np.uint8))
    rows = [np.hstack(cells[i : i + per_row]) for i in range(0, len(cells), per_row)]
    cv2.imwrite(str(out), np.vstack(rows))
    return out
