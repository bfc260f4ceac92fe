"""The scenario lifecycle end to end: control service + real decoder agent + simulated RTSP camera.

Everything here is real: the outbox relay publishes StartChannel/StopChannel over NATS, the agent
(``python -m vap_decoder agent``) spawns and stops decoder processes, its replies, heartbeats and the
channels' health move the scenario, and PostgreSQL records each step.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import duration_pb2

from vap_common import subjects
from vap_control.testing import RunningControl, wait_for
from vap_proto.v1 import control_pb2, health_pb2, scenario_pb2, source_pb2

pytestmark = pytest.mark.integration

S = scenario_pb2.ScenarioStatus
CS = health_pb2.ChannelState
USER, PASSWORD = "operator", "pa55-Secret-Xyz"


@pytest.fixture(scope="module")
def agent_overrides() -> dict[str, Any]:
    # One decoder slot: the MAX_WORKERS test fills it with one scenario; the other tests run one at a time.
    return {"max_workers": 1}


def _transitions(db: str, scenario_id: str) -> list[tuple[int, int]]:
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT from_status, to_status FROM scenario_transitions WHERE scenario_id = %s ORDER BY id",
            (uuid.UUID(scenario_id),),
        ).fetchall()
    return [(a, b) for a, b in rows]


def _worker(db: str, scenario_id: str) -> tuple[Any, ...] | None:
    with psycopg.connect(db) as conn:
        return conn.execute(
            "SELECT agent_id, pid, ring FROM workers WHERE scenario_id = %s", (uuid.UUID(scenario_id),)
        ).fetchone()


async def _status(control: RunningControl, scenario_id: str) -> scenario_pb2.Scenario:
    response = await control.stub.GetScenario(control_pb2.GetScenarioRequest(scenario_id=scenario_id))
    return response.scenario


async def _wait_status(
    control: RunningControl, scenario_id: str, status: int, timeout: float = 30.0
) -> scenario_pb2.Scenario:
    async def reached() -> scenario_pb2.Scenario | None:
        s = await _status(control, scenario_id)
        return s if s.status == status else None

    return await wait_for(reached, timeout, f"scenario {scenario_id} {S.Name(status)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def test_start_and_stop_walk_every_state_with_a_real_agent(
    control: RunningControl, decoder_agent: Any, rtsp_camera: Any, control_db: str, nats_client: Any
) -> None:
    configs: list[scenario_pb2.ScenarioConfig] = []

    async def on_config(msg: Any) -> None:
        configs.append(scenario_pb2.ScenarioConfig.FromString(msg.data))

    await nats_client.subscribe(subjects.all_scenario_configs(), cb=on_config)
    cam = rtsp_camera(user=USER, password=PASSWORD)
    created = await control.stub.CreateScenario(
        control_pb2.CreateScenarioRequest(
            scenario=scenario_pb2.Scenario(name="door", source=source_pb2.SourceSpec(url=cam.url)),
            client_request_id=uuid.uuid4().hex,
            start=True,
        )
    )
    sid = created.scenario.id
    assert created.created and created.scenario.status == S.SCENARIO_STATUS_INIT_STARTUP

    active = await _wait_status(control, sid, S.SCENARIO_STATUS_ACTIVE)
    assert _transitions(control_db, sid) == [
        (S.SCENARIO_STATUS_INACTIVE, S.SCENARIO_STATUS_INIT_STARTUP),
        (S.SCENARIO_STATUS_INIT_STARTUP, S.SCENARIO_STATUS_IN_STARTUP_PROCESSING),
        (S.SCENARIO_STATUS_IN_STARTUP_PROCESSING, S.SCENARIO_STATUS_ACTIVE),
    ]
    # The workers table says which agent and process run the scenario; the API shows the same.
    worker = _worker(control_db, sid)
    assert worker is not None
    agent_id, pid, ring = worker
    assert agent_id == decoder_agent.agent_id and pid > 0 and ring
    assert _pid_alive(pid)
    assert active.worker.agent_id == agent_id and active.worker.pid == pid and active.worker.ring == ring

    # The camera streams: the channel's health reaches the scenario and ListChannels.
    async def streaming() -> scenario_pb2.Scenario | None:
        s = await _status(control, sid)
        return s if s.health.state == CS.CHANNEL_STATE_STREAMING else None

    healthy = await wait_for(streaming, 30.0, "health STREAMING")
    assert healthy.health.agent_id == agent_id
    channels = await control.stub.ListChannels(control_pb2.ListChannelsRequest(scenario_ids=[sid]))
    (channel,) = channels.channels
    assert channel.channel_id == healthy.channel_id and channel.worker.pid == pid
    assert channel.health.state == CS.CHANNEL_STATE_STREAMING

    # Credentials are write-only: never in a response.
    for text in (str(active), str(healthy), str(channel)):
        assert PASSWORD not in text and USER not in text
    assert healthy.source.url == "" and healthy.source.redacted_url.startswith("rtsp://***@")
    listed = await control.stub.ListScenarios(control_pb2.ListScenariosRequest())
    assert PASSWORD not in str(listed)

    stopping = await control.stub.StopScenario(control_pb2.StopScenarioRequest(scenario_id=sid))
    assert stopping.scenario.status == S.SCENARIO_STATUS_INIT_SHUTDOWN
    await _wait_status(control, sid, S.SCENARIO_STATUS_INACTIVE)
    assert _transitions(control_db, sid)[3:] == [
        (S.SCENARIO_STATUS_ACTIVE, S.SCENARIO_STATUS_INIT_SHUTDOWN),
        (S.SCENARIO_STATUS_INIT_SHUTDOWN, S.SCENARIO_STATUS_IN_SHUTDOWN_PROCESSING),
        (S.SCENARIO_STATUS_IN_SHUTDOWN_PROCESSING, S.SCENARIO_STATUS_INACTIVE),
    ]
    assert _worker(control_db, sid) is None
    assert not _pid_alive(pid), "the decoder process must be gone once the scenario is INACTIVE"

    # Inference and tracker were told: the settings at start, "inactive" at stop, each a newer revision.
    async def told() -> list[scenario_pb2.ScenarioConfig] | None:
        mine = [c for c in configs if c.scenario_id == sid]
        return mine if len(mine) >= 2 else None

    started_config, stopped_config = (await wait_for(told, 10.0, "two ScenarioConfigs"))[:2]
    assert started_config.active and not stopped_config.active
    assert stopped_config.revision > started_config.revision
    assert started_config.channel_id == active.channel_id

    # Neither the control service's log nor the agent's carries the camera password.
    assert PASSWORD not in control.log_text()
    assert PASSWORD not in decoder_agent.log_text()

    # Start again (INACTIVE -> INIT_STARTUP is legal), then delete with force while running.
    await control.stub.StartScenario(control_pb2.StartScenarioRequest(scenario_id=sid))
    second = await _wait_status(control, sid, S.SCENARIO_STATUS_ACTIVE)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await control.stub.DeleteScenario(control_pb2.DeleteScenarioRequest(scenario_id=sid))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await control.stub.DeleteScenario(control_pb2.DeleteScenarioRequest(scenario_id=sid, force=True))
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await _status(control, sid)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND

    async def process_gone() -> bool:
        return not _pid_alive(second.worker.pid)

    await wait_for(process_gone, 30.0, "the deleted scenario's decoder process to stop")


async def test_unreachable_source_shows_in_health_not_as_a_crash(
    control: RunningControl, decoder_agent: Any, control_db: str
) -> None:
    # Nothing listens on port 9 (discard) of localhost: the camera cannot be opened.
    url = f"rtsp://{USER}:{PASSWORD}@127.0.0.1:9/nothing"
    spec = source_pb2.SourceSpec(url=url)
    spec.open_timeout.FromSeconds(1)
    created = await control.stub.CreateScenario(
        control_pb2.CreateScenarioRequest(scenario=scenario_pb2.Scenario(source=spec), start=True)
    )
    sid = created.scenario.id

    async def reported() -> scenario_pb2.Scenario | None:
        s = await _status(control, sid)
        bad = (CS.CHANNEL_STATE_RECONNECTING, CS.CHANNEL_STATE_FAILED)
        return s if s.health.state in bad and s.health.reason else None

    seen = await wait_for(reported, 30.0, "the source failure in the scenario's health")
    # The decoder runs and retries (ACTIVE) or gave up (FAILED with the reason): never a crash, and the
    # reason names no credentials.
    assert seen.status in (
        S.SCENARIO_STATUS_IN_STARTUP_PROCESSING,
        S.SCENARIO_STATUS_ACTIVE,
        S.SCENARIO_STATUS_FAILED,
    )
    assert PASSWORD not in str(seen)
    await control.stub.StopScenario(control_pb2.StopScenarioRequest(scenario_id=sid))
    await _wait_status(control, sid, S.SCENARIO_STATUS_INACTIVE)
    assert PASSWORD not in control.log_text()


async def test_clients_can_wait_for_video_not_just_active(
    control: RunningControl, decoder_agent: Any, rtsp_camera: Any
) -> None:
    """ACTIVE says the decoder runs, not that video flows; GetScenario(wait_streaming) waits for the
    latter and answers either way: STREAMING for a real camera, RECONNECTING with the reason and since when
    for one that cannot be reached."""
    wait = duration_pb2.Duration(seconds=20)
    cam = rtsp_camera()
    good = await control.stub.CreateScenario(
        control_pb2.CreateScenarioRequest(
            scenario=scenario_pb2.Scenario(source=source_pb2.SourceSpec(url=cam.url)), start=True
        )
    )
    streaming = await control.stub.GetScenario(
        control_pb2.GetScenarioRequest(scenario_id=good.scenario.id, wait_streaming=wait)
    )
    assert streaming.scenario.health.state == CS.CHANNEL_STATE_STREAMING
    assert streaming.scenario.status == S.SCENARIO_STATUS_ACTIVE
    await control.stub.StopScenario(control_pb2.StopScenarioRequest(scenario_id=good.scenario.id))
    await _wait_status(control, good.scenario.id, S.SCENARIO_STATUS_INACTIVE)  # the agent has one slot

    spec = source_pb2.SourceSpec(url="rtsp://127.0.0.1:9/nothing")
    spec.open_timeout.FromSeconds(1)
    bad = await control.stub.CreateScenario(
        control_pb2.CreateScenarioRequest(scenario=scenario_pb2.Scenario(source=spec), start=True)
    )
    started = time.monotonic()
    short = duration_pb2.Duration(seconds=4)
    waited = await control.stub.GetScenario(
        control_pb2.GetScenarioRequest(scenario_id=bad.scenario.id, wait_streaming=short)
    )
    assert 3.5 <= time.monotonic() - started < 15  # it waited, then answered with what it saw
    health = waited.scenario.health
    assert waited.scenario.status == S.SCENARIO_STATUS_ACTIVE  # running, but no video:
    assert health.state in (CS.CHANNEL_STATE_CONNECTING, CS.CHANNEL_STATE_RECONNECTING)
    assert health.state_since_ns > 0 and (health.state == CS.CHANNEL_STATE_CONNECTING or health.reason)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await control.stub.GetScenario(
            control_pb2.GetScenarioRequest(
                scenario_id=bad.scenario.id, wait_streaming=duration_pb2.Duration(seconds=3600)
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "wait_streaming" in (
        err.value.details() or ""
    )
    await control.stub.StopScenario(control_pb2.StopScenarioRequest(scenario_id=bad.scenario.id))
    await _wait_status(control, bad.scenario.id, S.SCENARIO_STATUS_INACTIVE)


async def test_no_decoder_capacity_is_resource_exhausted(
    control: RunningControl, decoder_agent: Any, rtsp_camera: Any, control_db: str
) -> None:
    cam = rtsp_camera()

    def spec() -> scenario_pb2.Scenario:
        return scenario_pb2.Scenario(source=source_pb2.SourceSpec(url=cam.url))

    first = await control.stub.CreateScenario(control_pb2.CreateScenarioRequest(scenario=spec(), start=True))
    await _wait_status(control, first.scenario.id, S.SCENARIO_STATUS_ACTIVE)

    async def heartbeat_counts_it() -> bool:
        with psycopg.connect(control_db) as conn:
            row = conn.execute(
                "SELECT count(*) FROM workers WHERE agent_id = %s", (decoder_agent.agent_id,)
            ).fetchone()
        return bool(row and row[0] == 1)

    await wait_for(heartbeat_counts_it, 10.0, "the agent's slot taken")
    with psycopg.connect(control_db) as conn:
        before = conn.execute("SELECT count(*) FROM scenarios").fetchone()
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await control.stub.CreateScenario(control_pb2.CreateScenarioRequest(scenario=spec(), start=True))
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "MAX_WORKERS" in (full.value.details() or "")
    with psycopg.connect(control_db) as conn:  # the refused create left nothing behind
        assert conn.execute("SELECT count(*) FROM scenarios").fetchone() == before
    idle = await control.stub.CreateScenario(control_pb2.CreateScenarioRequest(scenario=spec()))
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await control.stub.StartScenario(control_pb2.StartScenarioRequest(scenario_id=idle.scenario.id))
    assert again.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    await control.stub.StopScenario(control_pb2.StopScenarioRequest(scenario_id=first.scenario.id))
    await _wait_status(control, first.scenario.id, S.SCENARIO_STATUS_INACTIVE)
    for sid in (first.scenario.id, idle.scenario.id):
        await control.stub.DeleteScenario(control_pb2.DeleteScenarioRequest(scenario_id=sid))
