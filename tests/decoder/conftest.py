"""Fixtures of the decoder tests: short clips made from the sample video, unique channel ids."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vap_common.paths import sample_video
from vap_decoder.testing import make_clip
from vap_shmring import RING_PREFIX, SHM_DIR

VIDEO_576 = sample_video("vtest-576p25.mp4")


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s (50 frames, 2 GOPs) of the 576p sample, by stream copy."""
    if not VIDEO_576.is_file():
        pytest.skip(f"test video {VIDEO_576} not found (set VAP_SAMPLE_DATA_DIR)")
    return make_clip(VIDEO_576, tmp_path_factory.mktemp("clips") / "clip-50.mp4", 50)


@pytest.fixture
def channel_id() -> Iterator[str]:
    """A fresh channel id (tests derive more with suffixes); at teardown no ring of it may be left."""
    cid = f"test-cam-{uuid.uuid4().hex[:10]}"
    yield cid
    leaked = sorted(p.name for p in Path(SHM_DIR).glob(f"{RING_PREFIX}{cid}*"))
    assert not leaked, f"rings left behind: {leaked}"
