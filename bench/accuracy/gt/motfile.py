"""MOTChallenge gt.txt: ``frame,id,left,top,width,height,conf,-1,-1,-1`` with 1-based frames and conf 1 =
scored, 0 = ignore (too occluded or too small to ask of any detector)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GtBox:
    frame: int  # 0-based decode order (the file stores frame + 1)
    id: int
    x1: float
    y1: float
    x2: float
    y2: float
    scored: bool = True

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


def write(path: Path, boxes: list[GtBox]) -> None:
    lines = [
        f"{b.frame + 1},{b.id},{b.x1:.1f},{b.y1:.1f},{b.x2 - b.x1:.1f},{b.y2 - b.y1:.1f},"
        f"{int(b.scored)},-1,-1,-1"
        for b in sorted(boxes, key=lambda b: (b.frame, b.id))
    ]
    path.write_text("\n".join(lines) + "\n")


def read(path: Path) -> list[GtBox]:
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        f, i, left, top, w, h, conf, *_ = line.split(",")
        x1, y1 = float(left), float(top)
        out.append(GtBox(int(f) - 1, int(i), x1, y1, x1 + float(w), y1 + float(h), float(conf) > 0))
    return out
