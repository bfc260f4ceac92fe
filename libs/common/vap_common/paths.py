"""Where VAP finds its sample videos: one place, so tests, benchmarks and the demo agree."""

from __future__ import annotations

import os
from pathlib import Path

SAMPLE_DATA_ENV = "VAP_SAMPLE_DATA_DIR"
MODELS_ENV = "VAP_MODELS_DIR"
# The repository root: libs/common/vap_common/paths.py -> three levels up.
REPO_ROOT = Path(__file__).resolve().parents[3]


def sample_data_dir() -> Path:
    """$VAP_SAMPLE_DATA_DIR, else ../shared/data beside the checkout, else .vap/data in the checkout."""
    if given := os.environ.get(SAMPLE_DATA_ENV):
        return Path(given)
    beside = REPO_ROOT.parent / "shared" / "data"
    if beside.is_dir():
        return beside
    return REPO_ROOT / ".vap" / "data"


def sample_video(name: str = "vtest-576p25.mp4") -> Path:
    return sample_data_dir() / name


def models_dir() -> Path:
    """$VAP_MODELS_DIR (ready model files, e.g. ../shared/models in CI), else .vap/models in the checkout,
    where the model fetcher caches what it builds."""
    if given := os.environ.get(MODELS_ENV):
        return Path(given)
    return REPO_ROOT / ".vap" / "models"
