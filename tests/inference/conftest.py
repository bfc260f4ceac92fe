"""Fixtures of the inference tests: loaded detectors (once per session), sample frames, unique channels.

Tests that need a model file skip with the reason when it is absent (set VAP_MODELS_DIR=../shared/models,
as CI does, or run `python -m vap_stack.models fetch`).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from vap_inference.backends.onnxruntime import OrtBackend
from vap_inference.detector import Detector
from vap_inference.modelfiles import locate_model
from vap_inference.testing import missing_model_reason, model_path, video_frames
from vap_models.catalogue import NANODET, NANODET_INT8, SSDLITE, ModelSpec
from vap_shmring import SHM_DIR, ring_name

# vtest-576p25 frames used throughout: 0 and 200 have several people (README: NanoDet 3-4 and 8).
FRAME_INDICES = (0, 200)


def _detector(spec: ModelSpec, max_batch: int) -> Detector:
    reason = missing_model_reason(spec)
    if reason:
        pytest.skip(reason)
    return Detector(
        spec, OrtBackend(model_path(spec), threads=2, batch_cap=max_batch), max_batch=max_batch
    ).load()


@pytest.fixture(scope="session")
def nanodet() -> Detector:
    return _detector(NANODET, 8)


@pytest.fixture(scope="session")
def nanodet_int8_path(models_dir: Path) -> Path:
    """The INT8 NanoDet (the service's default) from the derived-model cache, built there on a miss."""
    return locate_model(NANODET_INT8, models_dir)[0]


@pytest.fixture(scope="session")
def nanodet_int8(nanodet_int8_path: Path) -> Detector:
    backend = OrtBackend(nanodet_int8_path, threads=2, batch_cap=1)
    return Detector(NANODET_INT8, backend, max_batch=1).load()


@pytest.fixture(scope="session")
def ssdlite() -> Detector:
    return _detector(SSDLITE, 4)


@pytest.fixture(scope="session")
def frames() -> dict[int, np.ndarray]:
    return video_frames(FRAME_INDICES)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    path = model_path(NANODET).parent
    for spec in (NANODET, SSDLITE):
        if reason := missing_model_reason(spec):
            pytest.skip(reason)
    # The service's default model is derived from NanoDet: build it once here (cached across sessions), so
    # that no service under test spends its start-up deadline building it.
    locate_model(NANODET_INT8, path)
    return path


@pytest.fixture
def channel_ids() -> Iterator[list[str]]:
    """Three channel ids no other test uses; their rings are unlinked afterwards if still there."""
    ids = [f"pytest-inf-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    yield ids
    for channel in ids:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM_DIR, ring_name(channel)))
