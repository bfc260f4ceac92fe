"""Fixtures of the control-service tests: a fresh database per module, the control service in this process,
a real decoder agent in a child process. NATS and PostgreSQL are the session's real servers."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from vap_control.testing import RunningControl, control_settings, running_control, temporary_database

TOKEN = "test-token-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
def control_token() -> str:
    """The test control service's API token (also the inference service's, which control calls with it)."""
    return TOKEN


@pytest.fixture(scope="module")
def control_db(database_url: str) -> Iterator[str]:
    with temporary_database(database_url) as url:
        yield url


@pytest.fixture(scope="module")
def control_overrides() -> dict[str, Any]:
    """Settings a module wants to change (override the fixture in the module)."""
    return {}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def control(
    nats_url: str,
    control_db: str,
    control_overrides: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[RunningControl]:
    consumer = f"test-inbox-{uuid.uuid4().hex[:8]}"
    settings = control_settings(nats_url, control_db, TOKEN, inbox_consumer=consumer, **control_overrides)
    log_path = tmp_path_factory.mktemp("control") / "control.log"
    async with running_control(settings, log_path) as running:
        assert running.service.fanout is not None and running.service.inbox is not None
        await running.service.fanout.ready.wait()
        yield running
        # Leave no durable consumer behind: it would keep results of other modules' channels pending.
        await running.service.inbox.stop()
        with contextlib.suppress(Exception):
            await running.service.bus.js.delete_consumer(settings.inbox_stream, consumer)


@pytest.fixture(scope="module")
def agent_overrides() -> dict[str, Any]:
    """Decoder agent settings a module wants to change (override the fixture in the module)."""
    return {}


@pytest.fixture(scope="module")
def decoder_agent(
    nats_url: str, tmp_path_factory: pytest.TempPathFactory, agent_overrides: dict[str, Any]
) -> Iterator[Any]:
    """A real decoder agent (``python -m vap_decoder agent``) on the session's NATS."""
    testing = pytest.importorskip(
        "vap_decoder.testing", reason="the decoder agent (services/decoder) is needed"
    )
    log = Path(tmp_path_factory.mktemp("agent")) / "agent.log"
    settings: dict[str, Any] = {
        "max_workers": 4,
        "status_interval_s": 0.5,
        "stop_grace_s": 3,
        **agent_overrides,
    }
    agent = testing.AgentProcess(nats_url, log, **settings)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
