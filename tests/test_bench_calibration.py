"""bench/calibration.py: the machine's speed against DESIGN.md's planning figures, and how suites keep it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import calibration, harness
from bench.__main__ import main as bench_main
from bench.harness import Suite, report
from vap_common.paths import models_dir, sample_video

speeds = st.floats(0.05, 20.0)


@given(speeds, speeds, speeds, speeds)
def test_ratio_is_planning_time_over_time_now(s720: float, s1080: float, sn: float, ss: float) -> None:
    """A machine k times as fast as at planning decodes k x the fps in 1/k of the model time: ratio k."""
    p = calibration.PLANNING
    measured: dict[str, float | None] = {
        "ffmpeg_720p_fps": p["ffmpeg_720p_fps"] * s720,
        "ffmpeg_1080p_fps": p["ffmpeg_1080p_fps"] * s1080,
        "nanodet_ms": p["nanodet_ms"] / sn,
        "ssdlite_ms": p["ssdlite_ms"] / ss,
    }
    ratios = calibration.speed_ratios(measured)
    for name, k in zip(p, (s720, s1080, sn, ss), strict=True):
        assert ratios[name] == pytest.approx(k)


def test_unmeasured_figures_are_left_out() -> None:
    ratios = calibration.speed_ratios({"ffmpeg_720p_fps": None, "nanodet_ms": 35.0, "ssdlite_ms": 0.0})
    assert ratios == {"nanodet_ms": pytest.approx(0.5)}
    line = calibration.describe(
        {"measured": {"nanodet_ms": 35.0}, "speed_vs_planning_median": 0.5, "speed_vs_planning": ratios}
    )
    assert "0.50x" in line and "nanodet 35.0 ms (planning 17.5)" in line and "ffmpeg_720p n/a fps" in line


def _skip_without_inputs() -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed (scripts/setup.sh installs it)")
    for file in ("nanodet-m-416.onnx", "ssdlite-mbv2-person-300.onnx"):
        if not (models_dir() / file).is_file():
            pytest.skip(f"{file} not in {models_dir()} (set VAP_MODELS_DIR or run the model fetcher)")
    if not sample_video("vtest-1080p25-10s.mp4").is_file():
        pytest.skip("sample videos not found (set VAP_SAMPLE_DATA_DIR)")


def test_measures_every_planning_figure_for_real() -> None:
    _skip_without_inputs()
    result = calibration.measure(runs=3)
    assert result["missing"] == {}
    measured = result["measured"]
    assert set(measured) == set(calibration.PLANNING)
    # Plausible for any machine that runs the project: real work took real time.
    assert 20 < measured["ffmpeg_720p_fps"] < 20_000 and 10 < measured["ffmpeg_1080p_fps"] < 10_000
    assert 1 < measured["nanodet_ms"] < 2_000 and 0.5 < measured["ssdlite_ms"] < 2_000
    assert result["speed_vs_planning"] == pytest.approx(calibration.speed_ratios(measured), rel=1e-2)
    assert min(result["speed_vs_planning"].values()) <= result["speed_vs_planning_median"]
    assert result["speed_vs_planning_median"] <= max(result["speed_vs_planning"].values())


def test_a_calibrated_suite_keeps_the_figures_in_its_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = {"measured": {"nanodet_ms": 35.0}, "speed_vs_planning_median": 0.5, "speed_vs_planning": {}}
    monkeypatch.setattr("bench.__main__.measure_calibration", lambda: fake)  # measured for real above
    harness.suites()  # the real suites first, so that loading them cannot replace the test's entry
    suite = Suite("calibrated-test", "rows of one", lambda quick: [{"x": 1}], ("x",), calibrate=True)
    monkeypatch.setitem(harness._SUITES, suite.name, suite)  # gone from the registry after the test
    out = tmp_path / "r.json"
    assert bench_main(["calibrated-test", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["calibration"] == fake
    assert bench_main(["calibrated-test", "--no-calibration", "--json", str(out)]) == 0
    assert "calibration" not in json.loads(out.read_text())
    assert "calibration" not in report("x", [])
