"""``python -m bench.accuracy.replay RUNS.json [--config NAME] [--set FIELD=VALUE ...]``: the raw detections
of a `bench accuracy` run (kept with VAP_ACCURACY_RUNS=RUNS.json) replayed through VAP's tracker core
(vap_tracker.bytetrack.ChannelTracker) with other TrackerConfig values, scored against the ground truth in
seconds instead of a minute per run. The replay reproduces the pipeline's identity scores (nanodet-int8@5:
IDF1 0.375 replayed vs 0.382 through the stack); what it leaves out is the tracker service around the core
(ReID re-attachment, analytics), so a change found here is confirmed with `bench accuracy`.

With the appearance cue on (TrackerConfig.uses_appearance, the default) the replay decodes the analysed
frames of the video once and computes each detection's features as the service does
(vap_tracker.appearance); ``--set appearance_reattach=0 --set appearance_veto=0 --set appearance_weight=0``
replays motion alone.
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
import numpy.typing as npt

from bench.accuracy.gt import motfile
from bench.accuracy.metrics import Pred, identity_scores, match_frames
from vap_common.paths import REPO_ROOT, sample_video
from vap_shmring.images import ArrayFrame
from vap_tracker.appearance import detection_features
from vap_tracker.bytetrack import ChannelTracker, TrackerConfig
from vap_tracker.kalman import KalmanParams
from vap_tracker.track import State

GT = REPO_ROOT / "bench" / "data" / "vtest576" / "gt.txt"
VIDEO = "vtest-576p25.mp4"
FILE_FPS = 25.0
U8 = npt.NDArray[np.uint8]


def analysed_frames(frames: Sequence[int], video: Path | None = None) -> dict[int, U8]:
    """BGR images of the given frame numbers (decode order) of the accuracy video."""
    import av

    wanted = set(frames)
    out: dict[int, U8] = {}
    with av.open(str(video or sample_video(VIDEO))) as container:
        for k, frame in enumerate(container.decode(video=0)):
            if k in wanted:
                out[k] = np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)
            if len(out) == len(wanted):
                break
    return out


def replay(run: dict[str, Any], config: TrackerConfig, images: dict[int, U8] | None = None) -> list[Pred]:
    """The tracked boxes the core reports per analysed frame (matched this frame, tentative or confirmed:
    what StreamDetections shows). ``images`` (frame -> BGR) feed the appearance cue when it is on."""
    by_frame: dict[int, list[list[float]]] = {}
    for frame, *box_score in run["raw"]:
        by_frame.setdefault(int(frame), []).append(box_score)
    tracker = ChannelTracker(config)
    shown = (int(State.TENTATIVE), int(State.CONFIRMED))
    out: list[Pred] = []
    for frame in run["frames"]:
        rows = np.array(by_frame.get(frame, []), np.float64).reshape(-1, 5)
        features = None
        if images is not None and config.uses_appearance:
            features = detection_features(
                ArrayFrame(images[frame]), rows[:, :4], rows[:, 4], config.high_score_threshold
            )
        tracks = tracker.update(rows[:, :4], rows[:, 4], timestamp_s=frame / FILE_FPS, features=features)
        keep = (tracks.frames_since_update == 0) & np.isin(tracks.state, shown)
        for tid, box in zip(tracks.track_id[keep], tracks.box[keep], strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            out.append(Pred(int(frame), int(tid), (x1, y1, x2, y2)))
    return out


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """FIELD=VALUE pairs for TrackerConfig (``kalman.FIELD`` for its KalmanParams), each value converted to
    the field's type."""
    types = {f.name: str(f.type) for f in dataclasses.fields(TrackerConfig)}
    types |= {f"kalman.{f.name}": str(f.type) for f in dataclasses.fields(KalmanParams)}
    out: dict[str, Any] = {}
    kalman: dict[str, Any] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in types:
            raise SystemExit(f"unknown TrackerConfig field {name!r} (fields: {', '.join(types)})")
        kind = types[name]
        parsed = (
            (value.lower() in ("1", "true", "yes"))
            if kind == "bool"
            else int(value)
            if kind == "int"
            else float(value)
        )
        if name.startswith("kalman."):
            kalman[name.removeprefix("kalman.")] = parsed
        else:
            out[name] = parsed
    if kalman:
        out["kalman"] = dataclasses.replace(KalmanParams(), **kalman)
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
    runs = [r for r in json.loads(args.runs.read_text()) if not args.config or r["config"] in args.config]
    images = (
        analysed_frames(sorted({f for r in runs for f in r["frames"]})) if config.uses_appearance else None
    )
    for run in runs:
        scores = identity_scores(match_frames(gt, replay(run, config, images), run["frames"]))
        shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items())
        print(f"{run['config']:24} {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
