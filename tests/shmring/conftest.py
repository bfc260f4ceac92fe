"""Fixtures of the shmring tests."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

from vap_shmring import SHM_DIR, ring_name


@pytest.fixture
def channel_id() -> Iterator[str]:
    """A channel id no other test (or test run) uses; its ring is unlinked afterwards if still there."""
    channel = f"pytest-{uuid.uuid4().hex[:10]}"
    yield channel
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(SHM_DIR, ring_name(channel)))
