"""The opt-in ``skip_loop_filter`` setting: off by default (the ring holds FFmpeg's exact pictures), and when
turned on it really reaches the decoder (its pictures differ from a normal decode after the keyframe)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vap_common.paths import sample_video
from vap_decoder.settings import DecoderSettings
from vap_decoder.source import open_source, plan_source
from vap_decoder.testing import reference_luma, source_spec

VIDEO = sample_video("vtest-576p25.mp4")
FRAMES = 8


def _luma(settings: DecoderSettings) -> list[npt.NDArray[np.uint8]]:
    planes: list[npt.NDArray[np.uint8]] = []
    with open_source(plan_source(source_spec(str(VIDEO)), settings)) as source:
        for packet in source.packets():
            for frame in packet.decode():
                planes.append(np.asarray(frame.to_ndarray()[: frame.height], dtype=np.uint8))
            if len(planes) >= FRAMES:
                return planes[:FRAMES]
    return planes


def test_loop_filter_is_kept_unless_asked_for() -> None:
    default = DecoderSettings(agent_id="unit", nats_url=None)
    assert not default.skip_loop_filter
    for url in ("rtsp://cam/x", str(VIDEO)):
        assert plan_source(source_spec(url), default).codec_options == {}
    fast = DecoderSettings(agent_id="unit", nats_url=None, skip_loop_filter=True)
    for url in ("rtsp://cam/x", str(VIDEO)):
        assert plan_source(source_spec(url), fast).codec_options == {"skip_loop_filter": "all"}


def test_default_pictures_are_ffmpegs_and_skip_loop_filter_changes_them() -> None:
    reference = reference_luma(VIDEO, FRAMES)
    default = _luma(DecoderSettings(agent_id="unit", nats_url=None))
    assert len(default) == FRAMES
    assert all(np.array_equal(a, b) for a, b in zip(default, reference, strict=True))
    unfiltered = _luma(DecoderSettings(agent_id="unit", nats_url=None, skip_loop_filter=True))
    assert len(unfiltered) == FRAMES
    assert any(not np.array_equal(a, b) for a, b in zip(unfiltered, reference, strict=True))
    # Still the same video: lower quality, not garbage.
    assert all(np.abs(a.astype(int) - b).mean() < 8 for a, b in zip(unfiltered, reference, strict=True))
