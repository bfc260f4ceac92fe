"""pytest fixtures for simulated RTSP cameras.

The root tests/conftest.py loads them with ``pytest_plugins = ["vap_rtspcam.fixtures"]``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vap_common.paths import sample_video
from vap_rtspcam.controller import RtspCamera, unavailable_reason

DEFAULT_FILE = sample_video("vtest-576p25.mp4")


class RtspCameraFactory:
    """Callable handed to tests by `rtsp_camera`; remembers every camera so teardown can close them."""

    def __init__(self) -> None:
        self.cameras: list[RtspCamera] = []

    def __call__(
        self,
        file: str | os.PathLike[str] = DEFAULT_FILE,
        port: int | None = None,
        path: str = "cam",
        user: str | None = None,
        password: str | None = None,
        *,
        start: bool = True,
        **options: Any,
    ) -> RtspCamera:
        if not Path(file).is_file():
            pytest.skip(f"test video {file} not found (set VAP_SAMPLE_DATA_DIR)")
        cam = RtspCamera(file, port, path, user, password, **options)
        self.cameras.append(cam)
        return cam.start() if start else cam

    def close_all(self) -> None:
        for cam in self.cameras:
            cam.close()


@pytest.fixture
def rtsp_camera() -> Iterator[RtspCameraFactory]:
    """Factory for simulated cameras: `cam = rtsp_camera(file, user=..., password=...)`; `cam.url`.

    Skips (does not fail) when the Debian packages for the server are missing, naming them.
    All cameras started through the factory are killed at teardown, paused ones included.
    """
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    factory = RtspCameraFactory()
    try:
        yield factory
    finally:
        factory.close_all()
