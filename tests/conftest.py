"""Fixtures shared by every test: real NATS and PostgreSQL servers, never mocks.

One NATS and one PostgreSQL are started per test session (``embedded_endpoints``), unless NATS_URL /
DATABASE_URL point at servers already (CI may provide them). Tests share these servers: name streams, subjects
and tables uniquely (e.g. with a uuid) and clean up what you create.

The embedded NATS refuses anonymous clients, like every VAP NATS: ``nats_url`` carries the admin user's
credentials (all rights), and ``nats_credentials_file`` holds the users of the service roles, for processes
that should run with their role's rights (``vap up`` through ``running_stack`` does).
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from vap_common.embedded import EmbeddedServers, Endpoints

# Simulated RTSP cameras (fixture ``rtsp_camera``) for any test directory.
pytest_plugins = ["vap_rtspcam.fixtures"]


# The only reasons a test may skip: hardware or privileges a machine may not have. Anything else (a missing
# package, model, video or tool that setup.sh or the fetchers provide) fails, so a run never passes hollow.
ALLOWED_SKIP_REASONS = ("NVIDIA GPU", "a GPU with TensorRT is present", "needs root")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and call.excinfo is not None and call.excinfo.errisinstance(pytest.skip.Exception):
        reason = str(call.excinfo.value)
        if not any(allowed in reason for allowed in ALLOWED_SKIP_REASONS):
            report.outcome = "failed"
            report.longrepr = (
                f"skipped for something this machine can have (run scripts/setup.sh): {reason}\n"
                f"Only these skips are allowed: {', '.join(ALLOWED_SKIP_REASONS)} (README: No hollow runs)."
            )


def pytest_configure(config: pytest.Config) -> None:
    """One camera key for the session (vap_common.camera_secrets), in the environment: the control services
    tests run in this process seal camera URLs with it and the decoder agents they start (which inherit the
    environment) open them, as `vap up` gives one key to both. Nothing is written into the checkout's
    default data dir. `vap up` under test makes its own key file (vap_stack.testing drops this one)."""
    from vap_common.camera_secrets import KEYS_ENV, generate_key

    os.environ.setdefault(KEYS_ENV, generate_key())


def pytest_sessionstart(session: pytest.Session) -> None:
    """Every model and sample video, made available before collection the way `vap up` does it: ready copies
    ($VAP_MODELS_DIR / $VAP_SAMPLE_DATA_DIR, or ../shared beside the checkout) when there, else fetched and
    converted into the per-user cache once per machine. Nothing is skipped for a missing file: a fetch
    that fails ends the session with its reason."""
    from vap_common.paths import sample_data_dir
    from vap_models.catalogue import BUILTIN_MODELS
    from vap_stack.sample import SampleError, ensure_sample_videos
    from vap_stack.up import StackError, ensure_models

    def report(message: str) -> None:
        print(f"[test assets] {message}", file=sys.__stderr__, flush=True)

    try:
        # Videos first: the INT8 models are calibrated on their frames.
        ensure_sample_videos(sample_data_dir(), report)
        ensure_models([spec.name for spec in BUILTIN_MODELS], report)
    except (SampleError, StackError) as exc:
        pytest.exit(f"test assets unavailable: {exc}", returncode=3)


@pytest.fixture(scope="session")
def embedded_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServers]:
    """NATS and PostgreSQL for the whole session. A fresh cluster per session (initdb ~1 s, durable=False:
    no fsync) rather than one reused from a cache dir: parallel sessions cannot share a running cluster, and
    copying a cached one would save well under a second."""
    with EmbeddedServers() as servers:
        servers.start(tmp_path_factory.mktemp("embedded"), durable=False)
        yield servers


@pytest.fixture(scope="session")
def embedded_endpoints(embedded_servers: EmbeddedServers) -> Endpoints:
    assert embedded_servers.endpoints is not None
    return embedded_servers.endpoints


@pytest.fixture(scope="session")
def nats_credentials_file(embedded_servers: EmbeddedServers) -> Path | None:
    """The users of the service roles on the session's NATS (None when NATS_URL names an external server:
    then everything runs with the URL's user info)."""
    nats = embedded_servers.nats
    return nats.credentials_file if nats is not None else None


@pytest.fixture(scope="session")
def nats_url(embedded_endpoints: Endpoints) -> str:
    assert embedded_endpoints.nats_url is not None
    return embedded_endpoints.nats_url


@pytest.fixture(scope="session")
def database_url(embedded_endpoints: Endpoints) -> str:
    assert embedded_endpoints.database_url is not None
    return embedded_endpoints.database_url


def _test_loop_scope(request: pytest.FixtureRequest) -> str:
    marker = request.node.get_closest_marker("asyncio")
    scope = marker.kwargs.get("loop_scope") if marker is not None else None
    return str(scope or request.config.getini("asyncio_default_test_loop_scope"))


@pytest_asyncio.fixture(loop_scope="session")
async def nats_client(nats_url: str, request: pytest.FixtureRequest) -> AsyncIterator[NatsClient]:
    """A connection for one test, closed after it. It lives on the session event loop (the project's
    ``asyncio_default_fixture_loop_scope``), so the test must run on that loop too."""
    if _test_loop_scope(request) != "session":
        # Otherwise the client's reader task runs on a loop that is idle during the test: timeouts and
        # CancelledError deep inside nats-py instead of a clear message.
        pytest.fail(
            "nats_client needs the test on the session event loop: mark it "
            '@pytest.mark.asyncio(loop_scope="session") or set asyncio_default_test_loop_scope = "session"'
        )
    client = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def scenario_config_stream(nats_client: NatsClient) -> AsyncIterator[JetStreamContext]:
    """The stream of latest ScenarioConfigs, created as the control service creates it (kept if it existed:
    control tests share it; removed after the test otherwise)."""
    from vap_control.settings import ControlSettings
    from vap_control.streams import config_stream_config, ensure_stream

    js = nats_client.jetstream()
    config = config_stream_config(ControlSettings())
    assert config.name is not None
    try:
        await js.stream_info(config.name)
        existed = True
    except NotFoundError:
        existed = False
    assert await ensure_stream(js, config)
    try:
        yield js
    finally:
        if not existed:
            await js.delete_stream(config.name)


@pytest.fixture
def pg_conn(database_url: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """A connection for one test; closing it rolls back whatever the test left uncommitted."""
    conn = psycopg.connect(database_url, connect_timeout=10)
    try:
        yield conn
    finally:
        conn.close()
