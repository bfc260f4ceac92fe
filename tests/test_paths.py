"""Where VAP keeps what it fetches once per machine: the user's cache, or the checkout when that is not
writable."""

from __future__ import annotations

from pathlib import Path

import pytest

from vap_common import paths


def test_cache_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "vap"
    monkeypatch.delenv(paths.MODELS_ENV, raising=False)
    assert paths.models_dir() == tmp_path / "xdg" / "vap" / "models"
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "mine"))
    assert paths.cache_dir() == tmp_path / "mine"


def test_an_unusable_user_cache_falls_back_to_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the cache directory would go")  # mkdir fails, root or not
    monkeypatch.delenv(paths.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert paths.cache_dir() == paths.REPO_ROOT / ".vap" / "cache"


def test_no_home_falls_back_to_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert paths.cache_dir() == paths.REPO_ROOT / ".vap" / "cache"
