"""StreamClock: the time the decoder gives each frame rises strictly within one open of a source."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from vap_decoder.timestamps import StreamClock

TB = 1 / 90000  # RTP's clock


def times(clock: StreamClock, pts: list[int | None]) -> list[float]:
    return [clock.seconds(p)[0] for p in pts]


def test_rising_pts_are_kept_exactly() -> None:
    clock = StreamClock(TB, 25.0)
    assert times(clock, [3600, 7200, 14400]) == [3600 * TB, 7200 * TB, 14400 * TB]
    assert clock.repairs == 0


def test_rtsp_first_picture_without_pts_is_time_zero_and_not_a_repair() -> None:
    clock = StreamClock(TB, 25.0)
    assert times(clock, [None, 3600, 7200]) == [0.0, 3600 * TB, 7200 * TB]
    assert clock.repairs == 0


def test_a_repeated_pts_moves_one_interval_on_and_later_frames_keep_their_spacing() -> None:
    # The split keyframe seen from a broken payloader: None, 0, then the stream's 3600, 7200, ...
    clock = StreamClock(TB, 25.0)
    got = times(clock, [None, 0, 3600, 7200])
    assert got == [0.0, 0.04, 0.04 + 3600 * TB, 0.04 + 7200 * TB]
    assert clock.repairs == 1


def test_a_camera_clock_stepping_back_does_not_rewind() -> None:
    clock = StreamClock(TB, 10.0)
    got = times(clock, [900000, 909000, 0, 9000])  # 10 s, 10.1 s, then the camera restarts at 0
    assert got[:2] == [10.0, 10.1]
    assert abs(got[2] - 10.2) < 1e-9 and abs(got[3] - 10.3) < 1e-9
    assert clock.repairs == 1


def test_reset_starts_a_new_epoch() -> None:
    clock = StreamClock(TB, 25.0)
    times(clock, [90000, 93600])
    clock.reset(1 / 1000, 25.0)
    assert times(clock, [0, 40]) == [0.0, 0.04]


@given(st.lists(st.one_of(st.none(), st.integers(-(10**9), 10**9)), max_size=60), st.floats(1.0, 60.0))
def test_times_always_rise(pts: list[int | None], fps: float) -> None:
    clock = StreamClock(TB, fps)
    got = times(clock, pts)
    assert all(b > a for a, b in itertools.pairwise(got))


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=60, unique=True))
def test_increasing_pts_are_never_touched(values: list[int]) -> None:
    pts = sorted(values)
    clock = StreamClock(TB, 25.0)
    assert times(clock, list(pts)) == [p * TB for p in pts]
    assert clock.repairs == 0
