"""Suite ``accuracy``: how right VAP's detections, identities and counts are on vtest-576p25.mp4 against
the committed ground truth (bench/data/vtest576, README there), per configuration.

Each configuration plays the clip once through the whole stack (bench/accuracy/runner.py) and is scored on
the frames it analysed: detections (precision/recall/F1 at IoU 0.5, by person height), identities (IDF1,
HOTA, MOTA, ID switches, ids per GT person), counting (per line and direction, count accuracy, event F1
within +-1 s), zone occupancy error, and the pipeline's CPU per analysed frame. Peer rows feed the same raw
detections to `trackers`' ByteTrack and OC-SORT with supervision's LineZone. The reference row is the most
expensive configuration VAP runs (NanoDet fp32, every frame).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.accuracy.crossings import Crossing, Line, anchor, track_crossings
from bench.accuracy.gt import motfile
from bench.accuracy.metrics import (
    count_scores,
    detection_scores,
    event_f1,
    identity_scores,
    match_frames,
    occupancy_error,
    person_lookup,
)
from bench.accuracy.peers import PEERS, run_peer
from bench.accuracy.runner import FILE_FPS, Config, RunResult, run_config
from bench.harness import Row, Suite, register
from bench.pipeline.stack import missing_reason, running_stack
from vap_common.paths import REPO_ROOT, sample_video
from vap_stack.config import LineRule, ZoneRule

GT = REPO_ROOT / "bench" / "data" / "vtest576" / "gt.txt"
VIDEO = "vtest-576p25.mp4"
WIDTH, HEIGHT = 768, 576
DEFAULT_MODEL = "nanodet-m-416-int8"
CONFIGS = [
    Config("nanodet-int8@5", DEFAULT_MODEL, 5),
    Config("nanodet-int8@10", DEFAULT_MODEL, 10),
    Config("nanodet@5", "nanodet-m-416", 5),
    Config("nanodet@10", "nanodet-m-416", 10),
    Config("ssdlite@5", "ssdlite-mbv2-person-300", 5),
    Config("ssdlite@10", "ssdlite-mbv2-person-300", 10),
    Config("reference: nanodet@25", "nanodet-m-416", 25, reference=True),
]
# Lines across the walkway in the site file's normalized coordinates: L2 and L4 are the hand-counted lines
# (shared/data/groundtruth), L1 and L3 two more verticals.
DEFAULT_LINES = {
    "L1": ((0.3, 0.05), (0.3, 0.95)),
    "L2": ((0.5, 0.05), (0.5, 0.95)),
    "L3": ((0.7, 0.05), (0.7, 0.95)),
    "L4": ((0.05, 0.45), (0.95, 0.45)),
}
ZONE = ((0.35, 0.3), (0.65, 0.3), (0.65, 0.7), (0.35, 0.7))
EVENT_WINDOW = FILE_FPS  # +-1 s
RUNS_ENV = "VAP_ACCURACY_RUNS"  # a path: the runs' raw results are written there as JSON

_options: dict[str, Any] = {"lines": None}


def configure(args: argparse.Namespace) -> None:
    _options["lines"] = getattr(args, "lines", None)


def lines_to_score() -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    path: Path | None = _options["lines"]
    if path is None:
        return dict(DEFAULT_LINES)
    data = json.loads(path.read_text())
    out = {}
    for line in data["lines"]:
        (x1, y1), (x2, y2) = line["points"]
        out[str(line["id"])] = ((float(x1), float(y1)), (float(x2), float(y2)))
    return out


ZONE_PX = [(x * WIDTH, y * HEIGHT) for x, y in ZONE]


def _inside(px: float, py: float) -> bool:
    """Point in ZONE (pixels), by ray casting. Written here, not taken from vap_tracker's geometry: the
    truth side of the score must not share code with the system it scores."""
    inside = False
    for (x1, y1), (x2, y2) in zip(ZONE_PX, ZONE_PX[1:] + ZONE_PX[:1], strict=True):
        if (y1 > py) != (y2 > py) and px < x1 + (py - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def true_crossings(gt: list[motfile.GtBox], lines: list[Line]) -> list[Crossing]:
    tracks: dict[int, list[tuple[int, tuple[float, float]]]] = {}
    for b in sorted(gt, key=lambda b: b.frame):
        tracks.setdefault(b.id, []).append((b.frame, anchor(b.box)))
    return [c for line in lines for tid, pts in tracks.items() for c in track_crossings(tid, pts, line)]


def score(
    name: str, result: RunResult, tracked: list[Any], crossings: list[Crossing], gt: list[motfile.GtBox],
    lines: list[Line], *, peer: bool,
) -> Row:  # fmt: skip
    frames = sorted(result.frames)
    det = detection_scores(match_frames(gt, result.raw, frames))
    matches = match_frames(gt, tracked, frames)
    ids = identity_scores(matches)
    truth = true_crossings(gt, lines)
    counts = count_scores(crossings, truth, [line.id for line in lines])
    row: Row = {
        "config": name,
        "model": result.config.model,
        "fps": result.config.fps,
        "reference": result.config.reference,
        "peer": peer,
        "frames": len(frames),
        **{k: round(v, 3) for k, v in det.items()},
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in ids.items()},
        "count_accuracy": round(float(counts["count_accuracy"]), 3),  # type: ignore[arg-type]
        "event_f1": round(event_f1(crossings, truth, person_lookup(matches, EVENT_WINDOW), EVENT_WINDOW), 3),
        "occupancy_mae": round(occupancy_error(gt, tracked, frames, _inside), 3),
        "lines": counts["lines"],
        "cpu_ms_per_frame": None if peer else round(result.cpu_ms_per_frame, 1),
        "tracker_ms_per_frame": None if peer else round(result.tracker_ms_per_frame, 2),
        "cpu_other": round(result.cpu_other, 1),
    }
    return row


async def _run(quick: bool) -> list[Row]:
    configs = CONFIGS[:1] if quick else CONFIGS
    models = list(dict.fromkeys(c.model for c in configs))
    if reason := missing_reason(models):
        raise RuntimeError(f"accuracy suite cannot run: {reason}")
    gt = motfile.read(GT)
    named = lines_to_score()
    rules = [LineRule(id=k, points=v) for k, v in named.items()]
    lines = [
        Line(k, (a[0] * WIDTH, a[1] * HEIGHT), (b[0] * WIDTH, b[1] * HEIGHT)) for k, (a, b) in named.items()
    ]
    zones = [ZoneRule(id="Z1", polygon=list(ZONE))]
    video = str(sample_video(VIDEO))
    rows: list[Row] = []
    runs: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="vap-bench-accuracy-") as work:
        async with running_stack(Path(work), models) as bs:
            for config in configs:
                print(f"  {config.name}: playing {VIDEO} once ({config.fps:g} analysed fps)", flush=True)
                result = await run_config(bs, video, config, rules, zones)
                runs.append(result)
                rows.append(
                    score(config.name, result, result.tracked, result.crossings, gt, lines, peer=False)
                )
                for peer in PEERS:
                    t0 = time.process_time()
                    tracked, crossings = run_peer(peer, result.raw, sorted(result.frames), config.fps, lines)
                    row = score(f"{config.name} {peer}", result, tracked, crossings, gt, lines, peer=True)
                    row["track_ms_per_frame"] = round(
                        (time.process_time() - t0) * 1000 / max(len(result.frames), 1), 2
                    )
                    rows.append(row)
    if dump := os.environ.get(RUNS_ENV):
        # What the API gave, per configuration: to look at frames or rescore without playing the clip again.
        Path(dump).write_text(json.dumps([_run_json(r) for r in runs]))
        print(f"  raw results of the runs in {dump}", flush=True)
    return rows


def _run_json(result: RunResult) -> dict[str, Any]:
    return {
        "config": result.config.name,
        "frames": sorted(result.frames),
        "tracked": [[p.frame, p.track, *p.box, p.score] for p in result.tracked],
        "raw": [[p.frame, *p.box, p.score] for p in result.raw],
        "crossings": [[c.line, c.track, c.frame, c.direction] for c in result.crossings],
    }


def run(quick: bool) -> list[Row]:
    return asyncio.run(_run(quick))


def summarize(rows: list[Row]) -> list[str]:
    out = []
    for row in rows:
        if row["peer"]:
            continue
        per_line = ", ".join(
            f"{line} " + " ".join(f"{k[0]}>{k[-1]} {v['counted']}/{v['true']}" for k, v in d.items())
            for line, d in row["lines"].items()
        )
        out.append(f"{row['config']}: counted/true {per_line}")
    return out


register(
    Suite(
        name="accuracy",
        description="detections, identities and counts on vtest-576p25 against the ground truth",
        run=run,
        columns=(
            "config",
            "det_precision",
            "det_recall",
            "det_f1",
            "det_recall_small",
            "idf1",
            "hota",
            "mota",
            "id_switches",
            "ids_per_person",
            "count_accuracy",
            "event_f1",
            "occupancy_mae",
            "cpu_ms_per_frame",
            "tracker_ms_per_frame",
            "cpu_other",
        ),
        summarize=summarize,
        configure=configure,
        calibrate=True,
    )
)
