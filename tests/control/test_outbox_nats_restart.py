"""The transactional outbox while NATS is down: the API keeps working, commands wait in PostgreSQL, and once
NATS is back (same port, as after a server restart) the relay delivers them to the real decoder agent."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from vap_common.embedded_nats import EmbeddedNats
from vap_common.ports import free_tcp_port
from vap_control.testing import RunningControl, control_settings, running_control, wait_for
from vap_proto.v1 import control_pb2, scenario_pb2, source_pb2

pytestmark = pytest.mark.integration

S = scenario_pb2.ScenarioStatus


class RestartableNats:
    """A NATS server of this module only, restartable on the same port and JetStream store."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_tcp_port()
        self.server: EmbeddedNats | None = None
        self.url = f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = EmbeddedNats(self.directory, port=self.port, monitoring=False)
        # The admin user's URL: its password is kept in the directory, so it holds across restarts.
        self.url = self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableNats]:
    nats = RestartableNats(tmp_path_factory.mktemp("own-nats"))
    nats.start()
    try:
        yield nats
    finally:
        nats.stop()


@pytest.fixture(scope="module")
def agent(own_nats: RestartableNats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    testing = pytest.importorskip(
        "vap_decoder.testing", reason="the decoder agent (services/decoder) is needed"
    )
    log = tmp_path_factory.mktemp("agent") / "agent.log"
    process = testing.AgentProcess(own_nats.url, log, max_workers=2, status_interval_s=0.5, stop_grace_s=3)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ctl(own_nats: RestartableNats, control_db: str, agent: Any) -> AsyncIterator[RunningControl]:
    settings = control_settings(own_nats.url, control_db, "token-" + uuid.uuid4().hex)
    async with running_control(settings) as running:
        yield running


def _outbox(db: str, scenario_id: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT kind, state, last_error FROM outbox WHERE scenario_id = %s ORDER BY id",
            (uuid.UUID(scenario_id),),
        ).fetchall()
    return [(k, s, e) for k, s, e in rows]


async def _wait_status(
    ctl: RunningControl, sid: str, status: int, timeout: float = 60.0
) -> scenario_pb2.Scenario:
    async def reached() -> scenario_pb2.Scenario | None:
        s = (await ctl.stub.GetScenario(control_pb2.GetScenarioRequest(scenario_id=sid))).scenario
        return s if s.status == status else None

    return await wait_for(reached, timeout, f"{S.Name(status)}")


async def _relay_passes(relay: Any) -> None:
    """Let the relay run a few passes while NATS is down (they must leave the rows pending)."""
    before = relay.blocked_passes

    async def ran() -> bool:
        return relay.blocked_passes >= before + 3

    await wait_for(ran, 20.0, "relay passes while NATS is down")


async def test_commands_wait_in_the_outbox_while_nats_is_down(
    ctl: RunningControl, own_nats: RestartableNats, agent: Any, rtsp_camera: Any, control_db: str
) -> None:
    async def agent_known() -> bool:
        with psycopg.connect(control_db) as conn:
            return (
                conn.execute("SELECT 1 FROM agents WHERE agent_id = %s", (agent.agent_id,)).fetchone()
                is not None
            )

    await wait_for(agent_known, 20.0, "the agent's heartbeat")
    cam = rtsp_camera()

    own_nats.stop()
    relay = ctl.service.relay
    assert relay is not None
    # The API works without NATS: the scenario and its commands are committed together.
    created = await ctl.stub.CreateScenario(
        control_pb2.CreateScenarioRequest(
            scenario=scenario_pb2.Scenario(source=source_pb2.SourceSpec(url=cam.url)), start=True
        )
    )
    sid = created.scenario.id

    await _relay_passes(relay)
    assert [(k, s) for k, s, _ in _outbox(control_db, sid)] == [
        ("scenario_config", "pending"),
        ("start_channel", "pending"),
    ]
    assert (await ctl.stub.GetScenario(control_pb2.GetScenarioRequest(scenario_id=sid))).scenario.status == (
        S.SCENARIO_STATUS_INIT_STARTUP
    )

    own_nats.start()  # same port: clients reconnect
    active = await _wait_status(ctl, sid, S.SCENARIO_STATUS_ACTIVE)
    assert active.worker.agent_id == agent.agent_id and active.worker.pid > 0
    assert [(k, s) for k, s, _ in _outbox(control_db, sid)] == [
        ("scenario_config", "sent"),
        ("start_channel", "sent"),
    ]

    # The other direction: a stop asked while NATS is down reaches the agent after the restart.
    own_nats.stop()
    stopping = await ctl.stub.StopScenario(control_pb2.StopScenarioRequest(scenario_id=sid))
    assert stopping.scenario.status == S.SCENARIO_STATUS_INIT_SHUTDOWN

    await _relay_passes(relay)
    assert [(k, s) for k, s, _ in _outbox(control_db, sid)][2:] == [
        ("scenario_config", "pending"),
        ("stop_channel", "pending"),
    ]
    own_nats.start()
    await _wait_status(ctl, sid, S.SCENARIO_STATUS_INACTIVE)
    assert all(s == "sent" for _, s, _ in _outbox(control_db, sid))

    async def process_gone() -> bool:
        import os

        try:
            os.kill(active.worker.pid, 0)
        except ProcessLookupError:
            return True
        return False

    await wait_for(process_gone, 20.0, "the decoder process to end")
