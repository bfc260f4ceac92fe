"""Scale-out on one machine: three nodes (decoder agent + decoders + inference, each its own process group
with its own node id and ring-name prefix), a three-server NATS cluster, one control plane and two sharded
trackers. Placement spreads the scenarios by free capacity and node selector; a node killed with SIGKILL has
its scenario resumed on another node; a drained node hands its scenario over without running it twice;
trackers split the channels and one takes over the other's when it dies; killing one NATS server stops
nothing. The tests run in order on shared module state (one deployment), with short heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import nats
import psycopg
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from scaleout_nodes import MODEL, Node, rotated

from vap_common import subjects
from vap_common.bus import NatsBus, connect_nats
from vap_common.embedded_nats import EmbeddedNatsCluster
from vap_common.nats_auth import NatsAuthError, Role, load_credentials_file
from vap_control.testing import (
    RunningControl,
    control_settings,
    drop_database,
    fresh_database,
    running_control,
    wait_for,
)
from vap_proto.v1 import control_pb2, detection_pb2, scenario_pb2, source_pb2
from vap_proto.v1.health_pb2 import CHANNEL_STATE_STREAMING as STREAMING
from vap_rtspcam import unavailable_reason
from vap_rtspcam.fixtures import RtspCameraFactory
from vap_tracker.service import TrackerService
from vap_tracker.settings import TrackerServiceSettings
from vap_tracker.sharding import owner

pytestmark = pytest.mark.integration

S = scenario_pb2.ScenarioStatus
TOKEN = "scaleout-" + uuid.uuid4().hex
AGENT_TIMEOUT_S = 4.0


@dataclass
class Seen:
    """Detections received per channel: (ring, stream epoch, sequence, capture time, arrival time)."""

    frames: dict[str, list[tuple[str, int, int, int, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def rings_since(self, channel: str, since: float) -> set[str]:
        return {f[0] for f in self.frames[channel] if f[4] >= since}

    def from_node(
        self, channel: str, node: Node, since: float = 0.0
    ) -> list[tuple[str, int, int, int, float]]:
        return [
            f for f in self.frames[channel] if f[4] >= since and f[0].startswith(f"vap-ring-{node.node_id}.")
        ]


@dataclass
class Deployment:
    cluster: EmbeddedNatsCluster
    control: RunningControl
    nodes: dict[str, Node]
    nc: NatsClient
    seen: Seen
    camera_url: str
    database_url: str
    trackers: list[TrackerService]
    scenarios: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def camera() -> Iterator[str]:
    if (reason := unavailable_reason()) is not None:
        pytest.skip(reason)
    cameras = RtspCameraFactory()
    try:
        yield cameras().url
    finally:
        cameras.close_all()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployment(
    models_available: None,
    nats_cluster: EmbeddedNatsCluster,
    database_url: str,
    camera: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Deployment]:
    urls, addresses = nats_cluster.urls, nats_cluster.addresses
    users = load_credentials_file(nats_cluster.credentials_file)
    nodes = {
        name: Node(
            name,
            rotated(addresses, i),
            Path(tmp_path_factory.mktemp(f"node-{name}")),
            labels={"zone": name},
            users=users,
        )
        for i, name in enumerate(("a", "b", "c"))
    }
    db = fresh_database(database_url)
    control = users[Role.CONTROL]
    settings = control_settings(
        rotated(addresses, 0),
        db,
        TOKEN,
        nats_user=control.user,
        nats_password=control.password,
        inbox_consumer=f"scaleout-{uuid.uuid4().hex[:8]}",
        agent_timeout_s=AGENT_TIMEOUT_S,
        reconcile_s=0.3,
        stream_replicas=3,
        stop_grace_s=2.0,
    )
    for node in nodes.values():
        node.start()
    trackers: list[TrackerService] = []
    try:
        async with running_control(settings, tmp_path_factory.mktemp("control") / "control.log") as control:
            await wait_for(
                lambda: asyncio.to_thread(lambda: all(n.ready() for n in nodes.values())), 90, "nodes ready"
            )
            nc = await nats.connect(urls[1:] + urls[:1], name="scaleout-test")
            seen = Seen()

            async def on_detections(msg: Any) -> None:
                fd = detection_pb2.FrameDetections.FromString(msg.data)
                f = fd.frame
                seen.frames[f.channel_id].append(
                    (fd.frame_ref.ring, f.stream_epoch, f.sequence, f.capture_time_ns, time.monotonic())
                )

            await nc.subscribe(subjects.all_detections(), cb=on_detections)
            yield Deployment(nats_cluster, control, nodes, nc, seen, camera, db, trackers)
            for tracker in trackers:
                with contextlib.suppress(Exception):
                    await tracker.stop()
                    assert tracker.bus is not None
                    await tracker.bus.close()
            await nc.close()
    finally:
        for node in nodes.values():
            node.stop()
        drop_database(database_url, db)


def _spec(url: str, name: str, selector: dict[str, str] | None = None) -> scenario_pb2.Scenario:
    return scenario_pb2.Scenario(
        name=name,
        source=source_pb2.SourceSpec(url=url, target_fps=3.0),
        pipeline=scenario_pb2.PipelineSettings(model=MODEL, confidence_threshold=0.3),
        node_selector=selector or {},
    )


async def _get(d: Deployment, sid: str) -> scenario_pb2.Scenario:
    return (await d.control.stub.GetScenario(control_pb2.GetScenarioRequest(scenario_id=sid))).scenario


async def _running_on(d: Deployment, sid: str, node: Node | None = None, *, since: float = 0.0) -> bool:
    """ACTIVE, streaming on ``node`` (any when None) and its detections arriving from that node's ring."""
    s = await _get(d, sid)
    if s.status != S.SCENARIO_STATUS_ACTIVE or s.health.state != STREAMING:
        return False
    if node is not None and s.worker.node_id != node.node_id:
        return False
    where = node or next(n for n in d.nodes.values() if n.node_id == s.worker.node_id)
    return bool(d.seen.from_node(s.channel_id, where, since))


def _workers(d: Deployment, sid: str) -> list[tuple[str, str]]:
    with psycopg.connect(d.database_url) as conn:
        rows = conn.execute("SELECT agent_id, node_id FROM workers WHERE scenario_id = %s", (sid,)).fetchall()
    return [(str(a), str(n)) for a, n in rows]


def _transitions(d: Deployment, sid: str) -> list[tuple[int, int, str]]:
    with psycopg.connect(d.database_url) as conn:
        rows = conn.execute(
            "SELECT from_status, to_status, reason FROM scenario_transitions WHERE scenario_id = %s"
            " ORDER BY id",
            (sid,),
        ).fetchall()
    return [(int(a), int(b), str(r)) for a, b, r in rows]


def _no_frame_twice(d: Deployment, channel: str) -> None:
    """Each decoded frame is inferred once: only its own node's inference reads a node's frames."""
    keys = [(f[1], f[2], f[3]) for f in d.seen.frames[channel]]
    assert len(keys) == len(set(keys)), f"frames of {channel} inferred more than once"


async def test_cluster_refuses_anonymous_clients_and_subjects_across_routes(
    nats_cluster: EmbeddedNatsCluster,
) -> None:
    """Every member of the cluster authenticates (none lets an anonymous client in) and a role's permissions
    hold on every member: the tracker's user, connected to one server, cannot get an agent command to a
    subscriber on another, while its own subjects cross the routes."""
    for address in nats_cluster.addresses:
        with pytest.raises(NatsAuthError, match="anonymous"):
            await connect_nats(address, name="scaleout-anonymous")
    admin = await nats.connect(nats_cluster.urls[0], name="scaleout-admin")
    tracker = await connect_nats(
        nats_cluster.addresses[2], name="scaleout-tracker", auth=nats_cluster.auth(Role.TRACKER)
    )
    try:
        got: list[str] = []

        async def record(msg: Any) -> None:
            got.append(msg.subject)

        agent = f"agent-{uuid.uuid4().hex[:6]}"
        await admin.subscribe(subjects.agent_commands(agent), cb=record)
        await admin.subscribe(subjects.tracks("scaleout-auth"), cb=record)
        await admin.flush()
        await asyncio.sleep(0.5)  # the subscriptions reach the other members over the routes
        await tracker.publish(subjects.agent_commands(agent), b"forged")
        await tracker.publish(subjects.tracks("scaleout-auth"), b"ours")
        await tracker.flush()
        await wait_for(
            lambda: asyncio.sleep(0, subjects.tracks("scaleout-auth") in got), 5.0, "tracks routed"
        )
        assert got == [subjects.tracks("scaleout-auth")]
    finally:
        await tracker.close()
        await admin.close()


async def test_placement_spreads_by_free_capacity_and_selector(deployment: Deployment) -> None:
    d = deployment
    nodes = await d.control.stub.ListNodes(control_pb2.ListNodesRequest())
    ours = {n.node_id: n for n in nodes.nodes}
    assert {n.node_id for n in d.nodes.values()} <= set(ours)
    assert ours[d.nodes["c"].node_id].capacity.labels["zone"] == "c"
    assert list(ours[d.nodes["c"].node_id].capacity.models) == [MODEL]

    for name, selector in (("s1", None), ("s2", None), ("s3", {"zone": "c"})):
        created = await d.control.stub.CreateScenario(
            control_pb2.CreateScenarioRequest(scenario=_spec(d.camera_url, name, selector), start=True)
        )
        d.scenarios[name] = created.scenario.id
        # One at a time: each placement sees the previous one's load.
        sid = created.scenario.id
        await wait_for(lambda sid=sid: _running_on(d, sid), 60, f"{name} running")

    placed = {name: (await _get(d, sid)).worker.node_id for name, sid in d.scenarios.items()}
    assert placed["s3"] == d.nodes["c"].node_id  # the selector
    assert len(set(placed.values())) == 3, placed  # free capacity: one per node
    for sid in d.scenarios.values():
        s = await _get(d, sid)
        assert len(_workers(d, sid)) == 1
        _no_frame_twice(d, s.channel_id)
    # A selector no node satisfies waits rather than landing anywhere.
    lost = await d.control.stub.CreateScenario(
        control_pb2.CreateScenarioRequest(scenario=_spec(d.camera_url, "nowhere", {"zone": "x"}), start=True)
    )
    await asyncio.sleep(1.0)
    waiting = await _get(d, lost.scenario.id)
    assert waiting.status == S.SCENARIO_STATUS_INIT_STARTUP and not waiting.HasField("worker")
    await d.control.stub.DeleteScenario(
        control_pb2.DeleteScenarioRequest(scenario_id=lost.scenario.id, force=True)
    )


async def test_trackers_shard_channels_and_take_over_a_dead_ones(deployment: Deployment) -> None:
    d = deployment
    addresses = d.cluster.addresses
    for i in range(2):
        settings = TrackerServiceSettings(
            nats_url=rotated(addresses, i),
            shard={
                "enabled": True,
                "tracker_id": f"tracker-{i}-{uuid.uuid4().hex[:4]}",
                "heartbeat_s": 0.2,
                "timeout_s": 1.0,
            },
        )
        bus = await NatsBus.connect(rotated(addresses, i), auth=d.cluster.auth(Role.TRACKER))
        tracker = TrackerService(settings, bus)
        await tracker.start()
        d.trackers.append(tracker)
    channels = {(await _get(d, sid)).channel_id for sid in d.scenarios.values()}
    ids = [t.settings.shard.tracker_id for t in d.trackers]

    def split() -> bool:
        held = [set(t.pipelines) & channels for t in d.trackers]
        expected = [{c for c in channels if owner(ids, c) == tid} for tid in ids]
        return held == expected

    await wait_for(lambda: asyncio.sleep(0, split()), 30, "channels split between the trackers")
    assert not (set(d.trackers[0].pipelines) & set(d.trackers[1].pipelines) & channels)

    # "Kill" tracker 1: its heartbeats stop and its connection drops, with no goodbye.
    dead = d.trackers.pop(1)
    assert dead.shard is not None and dead.bus is not None
    dead.shard._task.cancel() if dead.shard._task is not None else None
    await dead.bus.close()
    survivor = d.trackers[0]
    await wait_for(lambda: asyncio.sleep(0, channels <= set(survivor.pipelines)), 30, "takeover")


async def test_killed_node_scenario_resumes_elsewhere(deployment: Deployment) -> None:
    d = deployment
    sid = d.scenarios["s1"]
    placed_on = (await _get(d, sid)).worker.node_id
    victim = next(n for n in d.nodes.values() if n.node_id == placed_on)
    others = {n.node_id for n in d.nodes.values() if n is not victim}
    killed_at = time.monotonic()
    victim.kill()

    async def moved() -> bool:
        s = await _get(d, sid)
        return s.worker.node_id in others and await _running_on(d, sid, since=killed_at)

    try:
        await wait_for(moved, 30, "s1 running on another node")
    except TimeoutError:
        with psycopg.connect(d.database_url) as conn:
            for q in (
                "SELECT agent_id, node_id, last_seen, now(), max_workers FROM agents",
                "SELECT * FROM workers",
                "SELECT id, kind, agent_id, state, attempts, last_error, create_time FROM outbox ORDER BY id",
                "SELECT * FROM nodes",
            ):
                print(q)
                for r in conn.execute(q).fetchall():
                    print("   ", r)
        print(_transitions(d, sid))
        raise
    resumed_s = time.monotonic() - killed_at
    s = await _get(d, sid)
    print(f"\nkill -9 of node {victim.node_id}: s1 resumed on {s.worker.node_id} after {resumed_s:.1f} s")
    assert _workers(d, sid) == [(s.worker.agent_id, s.worker.node_id)]  # placed once, not twice
    reasons = [r for _, to, r in _transitions(d, sid) if to == S.SCENARIO_STATUS_INIT_STARTUP]
    assert any(victim.node_id in r and "stopped reporting" in r for r in reasons), reasons
    _no_frame_twice(d, s.channel_id)
    nodes = await d.control.stub.ListNodes(control_pb2.ListNodesRequest(include_dead=True))
    dead = next(n for n in nodes.nodes if n.node_id == victim.node_id)
    assert not dead.alive and dead.channels == 0
    d.nodes = {k: n for k, n in d.nodes.items() if n is not victim}


async def test_drained_node_hands_over_without_running_twice(deployment: Deployment) -> None:
    d = deployment
    placed = {sid: (await _get(d, sid)).worker.node_id for sid in d.scenarios.values()}
    old = next(n for n in d.nodes.values() if n.node_id == placed[d.scenarios["s2"]])
    spare = next(n for n in d.nodes.values() if n is not old)
    on_old = [sid for sid, node_id in placed.items() if node_id == old.node_id]
    # The node that took s1 from the killed node runs two scenarios; the other live node has one free slot.
    assert len(on_old) == 2
    drained = await d.control.stub.DrainNode(control_pb2.DrainNodeRequest(node_id=old.node_id))
    assert drained.node.draining and drained.moved == 2
    started = time.monotonic()

    async def one_moved_one_waiting() -> tuple[str, str] | None:
        states = {sid: await _get(d, sid) for sid in on_old}
        moved = [sid for sid in on_old if await _running_on(d, sid, spare, since=started)]
        waiting = [
            sid
            for sid, s in states.items()
            if s.status == S.SCENARIO_STATUS_INIT_STARTUP and not s.HasField("worker")
        ]
        return (moved[0], waiting[0]) if moved and waiting else None

    moved, waiting = await wait_for(one_moved_one_waiting, 60, "one scenario moved, one waiting for room")
    channel = (await _get(d, moved)).channel_id
    before, after = d.seen.from_node(channel, old), d.seen.from_node(channel, spare)
    # Never decoded on two nodes at once: every frame from the drained node was captured before the first one
    # from the new node.
    assert before and after and max(f[3] for f in before) < min(f[3] for f in after)
    gap_s = (min(f[3] for f in after) - max(f[3] for f in before)) / 1e9
    print(f"\ndrain of {old.node_id}: moved to {spare.node_id} with a capture gap of {gap_s:.2f} s")
    assert _workers(d, moved) == [(f"agent-{spare.node_id}", spare.node_id)]
    assert _workers(d, waiting) == []  # waits for room without holding a slot anywhere
    nodes = await d.control.stub.ListNodes(control_pb2.ListNodesRequest())
    info = next(n for n in nodes.nodes if n.node_id == old.node_id)
    assert info.draining and info.channels == 0
    with pytest.raises(grpc.aio.AioRpcError, match="not found") as err:
        await d.control.stub.DrainNode(control_pb2.DrainNodeRequest(node_id="no-such-node"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # Undrained, the node takes the waiting scenario.
    await d.control.stub.DrainNode(control_pb2.DrainNodeRequest(node_id=old.node_id, undrain=True))
    await wait_for(lambda: _running_on(d, waiting, old, since=started), 60, "the waiting scenario placed")


async def test_losing_one_nats_server_stops_nothing(deployment: Deployment) -> None:
    d = deployment
    d.cluster.servers[0].kill()  # the first server of control's and one node's list
    killed_at = time.monotonic()
    channels = {(await _get(d, sid)).channel_id: sid for sid in d.scenarios.values()}

    async def all_flowing() -> bool:
        return all(d.seen.rings_since(ch, killed_at + 1.0) for ch in channels)

    await wait_for(all_flowing, 60, "detections of every channel after the NATS server died")
    # The control plane still works end to end: a new scenario is placed, runs and its results are stored.
    created = await d.control.stub.CreateScenario(
        control_pb2.CreateScenarioRequest(scenario=_spec(d.camera_url, "s4"), start=True)
    )
    sid = created.scenario.id
    await wait_for(lambda: _running_on(d, sid), 60, "s4 running")

    async def stored() -> bool:
        page = await d.control.stub.QueryDetections(control_pb2.QueryDetectionsRequest(scenario_id=sid))
        return bool(page.frames)

    await wait_for(stored, 60, "s4 detections stored")
    for each in [*d.scenarios.values(), sid]:
        assert len(_workers(d, each)) == 1
