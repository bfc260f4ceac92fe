"""Where VAP finds its sample videos and models: one place, so tests, benchmarks and the demo agree."""

from __future__ import annotations

import os
from pathlib import Path

SAMPLE_DATA_ENV = "VAP_SAMPLE_DATA_DIR"
MODELS_ENV = "VAP_MODELS_DIR"
CACHE_ENV = "VAP_CACHE_DIR"
# The repository root: libs/common/vap_common/paths.py -> three levels up.
REPO_ROOT = Path(__file__).resolve().parents[3]


def cache_dir() -> Path:
    """$VAP_CACHE_DIR, else $XDG_CACHE_HOME/vap, else ~/.cache/vap: what VAP fetches or builds once per
    machine (models, sample videos), shared by every checkout of the user. Where that cannot be written (no
    home, a read-only home in a container), .vap/cache in the checkout."""
    if given := os.environ.get(CACHE_ENV):
        return Path(given)
    xdg = os.environ.get("XDG_CACHE_HOME")
    try:
        user = (Path(xdg) if xdg else Path.home() / ".cache") / "vap"
        user.mkdir(parents=True, exist_ok=True)
        if os.access(user, os.W_OK | os.X_OK):
            return user
    except (OSError, RuntimeError):  # RuntimeError: Path.home() without HOME or a passwd entry
        pass
    return REPO_ROOT / ".vap" / "cache"


def sample_data_dir() -> Path:
    """$VAP_SAMPLE_DATA_DIR, else ../shared/data beside the checkout, else the cache's data/."""
    if given := os.environ.get(SAMPLE_DATA_ENV):
        return Path(given)
    beside = REPO_ROOT.parent / "shared" / "data"
    if beside.is_dir():
        return beside
    return cache_dir() / "data"


def sample_video(name: str = "vtest-576p25.mp4") -> Path:
    return sample_data_dir() / name


def models_dir() -> Path:
    """$VAP_MODELS_DIR (ready model files, e.g. ../shared/models in CI), else the cache's models/, where
    the model fetcher keeps what it converts."""
    if given := os.environ.get(MODELS_ENV):
        return Path(given)
    return cache_dir() / "models"
