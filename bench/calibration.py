"""How fast this machine is right now, against the figures DESIGN.md's targets were planned from.

DESIGN.md "Targets" quotes what the 2-core machine did during planning: ``ffmpeg -threads 2 -f null`` decodes
720p at ~980 fps and 1080p at ~460 fps, NanoDet-416 runs ~15-20 ms per frame with 2 threads, SSDLite person
~7 ms. The capacity targets (channels per model) follow from those speeds. A shared VM's speed moves with
its host, so suites whose results are CPU capacity (e2e, inference) measure the same four things first, with
the same commands, on an idle machine, and put them in their JSON under ``calibration``: a result is then
read against the speed the machine had when it was taken.

``speed_vs_planning``: per figure, planning time / time now (1.0 = as fast as at planning, 0.5 = half as
fast); ``speed_vs_planning_median`` summarises the four.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# DESIGN.md "Targets", the planning figures (NanoDet: the middle of "~15-20 ms").
PLANNING: dict[str, float] = {
    "ffmpeg_720p_fps": 980.0,
    "ffmpeg_1080p_fps": 460.0,
    "nanodet_ms": 17.5,
    "ssdlite_ms": 7.0,
}
_FPS_FIGURES = {"ffmpeg_720p_fps", "ffmpeg_1080p_fps"}
_VIDEOS = {"ffmpeg_720p_fps": "vtest-720p25.mp4", "ffmpeg_1080p_fps": "vtest-1080p25-10s.mp4"}
_MODEL_THREADS = 2  # as in the planning figures
_FRAME_INDEX = 100  # a frame with people in it (NanoDet finds 6 there)


def speed_ratios(measured: dict[str, float | None]) -> dict[str, float]:
    """Planning time / time now for every figure that was measured (fps: now / planning)."""
    ratios: dict[str, float] = {}
    for name, planned in PLANNING.items():
        value = measured.get(name)
        if value is None or value <= 0:
            continue
        ratios[name] = value / planned if name in _FPS_FIGURES else planned / value
    return ratios


def describe(calibration: dict[str, Any]) -> str:
    """One line for the console and the README."""
    measured = calibration["measured"]
    parts = []
    for name, planned in PLANNING.items():
        value = measured.get(name)
        unit = "fps" if name in _FPS_FIGURES else "ms"
        label = name.removesuffix("_fps").removesuffix("_ms")
        now = "n/a" if value is None else f"{value:.0f}" if unit == "fps" else f"{value:.1f}"
        parts.append(f"{label} {now} {unit} (planning {planned:g})")
    median = calibration.get("speed_vs_planning_median")
    speed = "unknown" if median is None else f"{median:.2f}x"
    return f"machine speed vs DESIGN.md's planning figures: {speed} ({', '.join(parts)})"


def _median_ms(run: Callable[[], object], runs: int) -> float:
    for _ in range(3):  # warm-up: first runs allocate and pick kernels
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def _frame(path: Path, width: int, height: int, fmt: str) -> npt.NDArray[np.uint8]:
    import av

    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index == _FRAME_INDEX:
                image = frame.to_ndarray(width=width, height=height, format=fmt)
                return np.asarray(image, dtype=np.uint8)
    raise RuntimeError(f"{path} has fewer than {_FRAME_INDEX + 1} frames")


def _session(path: Path) -> Any:
    from vap_models.session import open_session

    return open_session(path, threads=_MODEL_THREADS)


def nanodet_ms(model: Path, video: Path, runs: int) -> float:
    """Median model run of NanoDet-m 416 (fp32, the shipped file) on a real frame, 2 threads."""
    from vap_inference.decoders.nanodet import MEAN_BGR, STD_BGR

    bgr = _frame(video, 416, 416, "bgr24").astype(np.float32)
    mean, std = np.array(MEAN_BGR, np.float32), np.array(STD_BGR, np.float32)
    tensor = np.ascontiguousarray(((bgr - mean) / std).transpose(2, 0, 1)[None])
    session = _session(model)
    feed = {session.get_inputs()[0].name: tensor}
    return _median_ms(lambda: session.run(None, feed), runs)


def ssdlite_ms(model: Path, video: Path, runs: int) -> float:
    """Median model run of SSDLite person (the shipped file, NMS included) on a real 300x300 frame."""
    rgb = _frame(video, 300, 300, "rgb24")[None]
    session = _session(model)
    feed = {session.get_inputs()[0].name: rgb}
    return _median_ms(lambda: session.run(None, feed), runs)


def measure(runs: int = 30) -> dict[str, Any]:
    """Measure the planning figures now. A figure that cannot be measured (no ffmpeg, no model file) is
    None, with the reason in ``missing``."""
    from bench.suites.decode import ffmpeg_fps
    from vap_common.paths import models_dir, sample_video

    measured: dict[str, float | None] = {}
    missing: dict[str, str] = {}
    for name, file in _VIDEOS.items():
        try:
            measured[name] = round(ffmpeg_fps(sample_video(file))[0], 1)
        except (RuntimeError, OSError) as exc:
            measured[name], missing[name] = None, str(exc)
    video = sample_video("vtest-720p25.mp4")
    for name, model_file, fn in (
        ("nanodet_ms", "nanodet-m-416.onnx", nanodet_ms),
        ("ssdlite_ms", "ssdlite-mbv2-person-300.onnx", ssdlite_ms),
    ):
        model = models_dir() / model_file
        if not model.is_file() or not video.is_file():
            measured[name], missing[name] = None, f"{model if not model.is_file() else video} not found"
            continue
        measured[name] = round(fn(model, video, runs), 2)
    ratios = speed_ratios(measured)
    return {
        "measured": measured,
        "planning": dict(PLANNING),
        "speed_vs_planning": {k: round(v, 3) for k, v in ratios.items()},
        "speed_vs_planning_median": round(statistics.median(ratios.values()), 3) if ratios else None,
        "missing": missing,
        "model_threads": _MODEL_THREADS,
    }
