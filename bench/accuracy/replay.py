"""``python -m bench.accuracy.replay RUNS.json [--config NAME] [--set FIELD=VALUE ...]``: the raw detections
of a `bench accuracy` run (kept with VAP_ACCURACY_RUNS=RUNS.json) replayed through VAP's tracker core
(vap_tracker.bytetrack.ChannelTracker) with other TrackerConfig values, scored against the ground truth in
seconds instead of a minute per run. The replay reproduces the pipeline's identity scores (nanodet-int8@5:
IDF1 0.375 replayed vs 0.382 through the stack); what it leaves out is the tracker service around the core
(ReID re-attachment, analytics), so a change found here is confirmed with `bench accuracy`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.accuracy.gt import motfile
from bench.accuracy.metrics import Pred, identity_scores, match_frames
from vap_common.paths import REPO_ROOT
from vap_tracker.bytetrack import ChannelTracker, TrackerConfig
from vap_tracker.track import State

GT = REPO_ROOT / "bench" / "data" / "vtest576" / "gt.txt"
FILE_FPS = 25.0


def replay(run: dict[str, Any], config: TrackerConfig) -> list[Pred]:
    """The tracked boxes the core reports per analysed frame (matched this frame, tentative or confirmed:
    what StreamDetections shows)."""
    by_frame: dict[int, list[list[float]]] = {}
    for frame, *box_score in run["raw"]:
        by_frame.setdefault(int(frame), []).append(box_score)
    tracker = ChannelTracker(config)
    shown = (int(State.TENTATIVE), int(State.CONFIRMED))
    out: list[Pred] = []
    for frame in run["frames"]:
        rows = np.array(by_frame.get(frame, []), np.float64).reshape(-1, 5)
        tracks = tracker.update(rows[:, :4], rows[:, 4], timestamp_s=frame / FILE_FPS)
        keep = (tracks.frames_since_update == 0) & np.isin(tracks.state, shown)
        for tid, box in zip(tracks.track_id[keep], tracks.box[keep], strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            out.append(Pred(int(frame), int(tid), (x1, y1, x2, y2)))
    return out


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """FIELD=VALUE pairs for TrackerConfig, each value converted to the field's type."""
    types = {f.name: f.type for f in dataclasses.fields(TrackerConfig)}
    out: dict[str, Any] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in types:
            raise SystemExit(f"unknown TrackerConfig field {name!r} (fields: {', '.join(types)})")
        kind = str(types[name])
        out[name] = (
            (value.lower() in ("1", "true", "yes"))
            if kind == "bool"
            else int(value)
            if kind == "int"
            else float(value)
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.accuracy.replay", description=__doc__.split("\n")[0]
    )
    parser.add_argument("runs", type=Path, help="JSON written by bench accuracy with VAP_ACCURACY_RUNS set")
    parser.add_argument("--config", action="append", help="configuration name(s) in the file (default: all)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="TrackerConfig field"
    )
    args = parser.parse_args(argv)
    gt = motfile.read(GT)
    settings = parse_settings(args.set)
    config = dataclasses.replace(TrackerConfig(), **settings)
    for run in json.loads(args.runs.read_text()):
        if args.config and run["config"] not in args.config:
            continue
        scores = identity_scores(match_frames(gt, replay(run, config), run["frames"]))
        shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items())
        print(f"{run['config']:24} {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
