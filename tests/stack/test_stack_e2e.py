"""The product end to end: `vap up` with two cameras on real RTSP servers, a gRPC client, the `vap` CLI.

One stack (module scope) serves all tests: the CLI's exit codes against the running control API, then the
end-to-end run: tracked people with stable track ids and line-crossing events stream to a subscriber and are
queryable afterwards; killing one camera's RTSP server leaves the other streaming and the first recovers when
its server is back; Ctrl+C stops everything with status 0. Then the CLI drives a third scenario (a camera
behind RTSP credentials) through create, start, live update, stop and delete, and `vap watch` shows both
cameras.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http.client
import json
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

from vap_common.embedded import EmbeddedServers
from vap_common.nats_auth import load_credentials_file
from vap_common.paths import sample_video
from vap_control.testing import authenticated_channel, wait_for
from vap_proto.v1 import analytics_pb2, common_pb2, control_pb2, control_pb2_grpc, scenario_pb2
from vap_proto.v1.health_pb2 import CHANNEL_STATE_STREAMING as STREAMING
from vap_rtspcam import RtspCamera, unavailable_reason
from vap_rtspcam.fixtures import RtspCameraFactory
from vap_stack.cli import (
    EXIT_AUTH,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_STATE,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from vap_stack.testing import StackProcess, running_stack

pytestmark = pytest.mark.integration

VIDEO = sample_video("vtest-576p25.mp4")
MODEL = "ssdlite-mbv2-person-300"
# Three vertical lines: people in the sample walk mostly sideways, so some line is crossed within seconds.
LINES = [
    {
        "id": f"x{int(x * 100)}",
        "points": [[x, 0.02], [x, 0.98]],
        "arrow": [[x - 0.05, 0.5], [x + 0.05, 0.5]],
        "labels": ["right", "left"],
    }
    for x in (0.3, 0.5, 0.7)
]


@pytest.fixture(scope="module")
def stack(
    nats_url: str,
    database_url: str,
    nats_credentials_file: Path | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    registry = pytest.importorskip("vap_models.catalogue")
    from vap_inference.testing import missing_model_reason

    if reason := missing_model_reason(registry.SSDLITE):
        pytest.skip(reason)
    if reason := unavailable_reason():
        pytest.skip(reason)
    if not VIDEO.is_file():
        pytest.skip(f"test video {VIDEO} not found (set VAP_SAMPLE_DATA_DIR)")
    # Module scope (one stack for both tests), so not the function-scoped rtsp_camera fixture.
    cams = {cid: RtspCamera(VIDEO, path=cid, shared=True).start() for cid in ("cam-a", "cam-b")}
    workdir = tmp_path_factory.mktemp("stack")
    config = {
        "site": "e2e",
        "data_dir": str(workdir / "data"),
        "ports": {"control": 0, "inference": 0, "metrics_base": 0, "web": 0},
        "cameras": [
            {"id": cid, "url": cam.url, "fps": 5, "model": MODEL, "confidence": 0.4, "lines": LINES}
            for cid, cam in cams.items()
        ],
        "inference": {"threads": 1, "default_model": MODEL},
        "tracker": {"reid": {"embedder": "hsv"}},
        "decoder": {"status_interval_s": 0.5, "read_timeout_s": 2.0, "backoff_max_s": 2.0},
        "control": {
            "stats_window_s": 5.0,
            "reconcile_s": 0.5,
            "health_persist_s": 1.0,
        },
    }
    try:
        with running_stack(
            config,
            workdir,
            nats_url=nats_url,
            database_url=database_url,
            prefix="vap_stack_test",
            nats_credentials=nats_credentials_file,
        ) as (proc, state):
            yield {"proc": proc, "state": state, "cameras": cams, "workdir": workdir}
    finally:
        for cam in cams.values():
            cam.close()


@pytest_asyncio.fixture(loop_scope="session")
async def api(stack: dict[str, Any]) -> AsyncIterator[control_pb2_grpc.ControlServiceAsyncStub]:
    proc: StackProcess = stack["proc"]
    channel = authenticated_channel(stack["state"]["control"], proc.token())
    try:
        yield control_pb2_grpc.ControlServiceStub(channel)
    finally:
        await channel.close()


def test_cli_exit_codes(stack: dict[str, Any], tmp_path: Path) -> None:
    proc: StackProcess = stack["proc"]
    data = ["--data-dir", str(proc.data_dir)]
    listed = proc.cli("scenario", "list", *data)
    assert listed.returncode == EXIT_OK, listed.stderr
    assert listed.stdout.count("ACTIVE") + listed.stdout.count("STARTUP") >= 2
    sid = stack["state"]["scenarios"]["cam-a"]
    got = proc.cli("scenario", "get", sid, *data)
    assert got.returncode == EXIT_OK and sid in got.stdout
    assert "rtsp://" in got.stdout  # the redacted URL is shown
    missing = proc.cli("scenario", "get", str(uuid.uuid4()), *data)
    assert missing.returncode == EXIT_NOT_FOUND and "vap: error:" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = proc.cli("scenario", "get", "not-a-uuid", *data)
    assert bad.returncode == EXIT_USAGE, bad.stderr
    status = proc.cli("status", *data)
    assert status.returncode == EXIT_OK, status.stdout + status.stderr
    assert "control" in status.stdout and "SERVING" in status.stdout
    # `vap up` is one node: its agent registered it; draining an unknown node is "not found".
    nodes = proc.cli("node", "list", "--json", *data)
    assert nodes.returncode == EXIT_OK, nodes.stderr
    (node,) = json.loads(nodes.stdout)
    assert node["alive"] and int(node["channels"]) >= 2
    unknown = proc.cli("node", "drain", "no-such-node", *data)
    assert unknown.returncode == EXIT_NOT_FOUND and "not found" in unknown.stderr
    wrong_token = proc.cli("scenario", "list", *data, env={"VAP_TOKEN": "wrong"})
    assert wrong_token.returncode == EXIT_AUTH and "wrong" not in wrong_token.stderr
    nowhere = proc.cli("scenario", "list", "--target", "127.0.0.1:9", *data)
    assert nowhere.returncode == EXIT_UNAVAILABLE and "not reachable" in nowhere.stderr
    no_image = proc.cli("detect", str(tmp_path / "none.jpg"), *data)
    assert no_image.returncode == EXIT_USAGE and "cannot read image" in no_image.stderr

    import cv2

    from vap_inference.testing import video_frames

    image = tmp_path / "frame.jpg"
    cv2.imwrite(str(image), video_frames((100,))[100])
    detected = proc.cli("detect", str(image), "--model", MODEL, *data)
    assert detected.returncode == EXIT_OK, detected.stderr
    assert "person" in detected.stdout


async def test_two_cameras_end_to_end(
    stack: dict[str, Any], api: control_pb2_grpc.ControlServiceAsyncStub
) -> None:
    scenarios: dict[str, str] = stack["state"]["scenarios"]
    camera_of = {sid: cid for cid, sid in scenarios.items()}
    # Arrival time of each tracked frame per camera, and the frames each (camera, track id) was seen in.
    arrivals: dict[str, list[float]] = collections.defaultdict(list)
    track_frames: collections.Counter[tuple[str, int]] = collections.Counter()
    crossings: list[Any] = []

    async def read_detections() -> None:
        request = control_pb2.StreamDetectionsRequest(scenario_ids=list(camera_of), tracked=True)
        async for item in api.StreamDetections(request):
            cam = camera_of[item.frame.frame.scenario_id]
            arrivals[cam].append(time.monotonic())
            for d in item.frame.detections:
                if d.HasField("track_id") and d.class_name == "person":
                    track_frames[(cam, d.track_id)] += 1

    async def read_events() -> None:
        async for item in api.StreamEvents(control_pb2.StreamEventsRequest(scenario_ids=list(camera_of))):
            if item.event.WhichOneof("kind") == "line_crossing":
                crossings.append(item.event)

    readers = [asyncio.ensure_future(read_detections()), asyncio.ensure_future(read_events())]
    try:
        # Live: both cameras' people tracked under stable ids (one id over >= 8 frames), and crossings.
        async def tracked_and_crossed() -> bool:
            stable = {cam for (cam, _tid), n in track_frames.items() if n >= 8}
            return stable == set(scenarios) and bool(crossings)

        await wait_for(
            tracked_and_crossed, 60.0, "stable tracks on both cameras and a line crossing", interval=0.2
        )
        crossing = crossings[0]
        assert crossing.class_name == "person" and crossing.track_id > 0
        assert crossing.line_crossing.direction_label in ("right", "left")

        # One camera's RTSP server dies: the other keeps streaming, the first reconnects once it is back.
        stack["cameras"]["cam-a"].kill()
        killed = time.monotonic()
        await asyncio.sleep(4.0)
        b_after = [t for t in arrivals["cam-b"] if t > killed + 1.0]
        assert len(b_after) >= 5, f"cam-b stalled while cam-a was down ({len(b_after)} frames)"

        async def a_reconnecting() -> bool:
            reply = await api.ListChannels(control_pb2.ListChannelsRequest(scenario_ids=[scenarios["cam-a"]]))
            return any(c.health.reconnect_count > 0 or c.health.state != STREAMING for c in reply.channels)

        await wait_for(a_reconnecting, 15.0, "cam-a's channel noticing the outage", interval=0.3)
        stack["cameras"]["cam-a"].start()
        back = time.monotonic()

        async def a_recovered() -> bool:
            return sum(1 for t in arrivals["cam-a"] if t > back) >= 5

        await wait_for(a_recovered, 30.0, "cam-a streaming again after its server restarted", interval=0.2)
        assert sum(1 for t in arrivals["cam-b"] if t > back) > 0
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    # Stored: tracked detections and the crossing events are queryable afterwards.
    async def stored_tracks() -> bool:
        page = await api.QueryDetections(control_pb2.QueryDetectionsRequest(scenario_id=scenarios["cam-b"]))
        return any(d.HasField("track_id") for f in page.frames for d in f.detections)

    await wait_for(stored_tracks, 30.0, "stored detections with track ids")

    async def stored_crossing() -> bool:
        page = await api.QueryEvents(
            control_pb2.QueryEventsRequest(scenario_id=crossing.scenario_id, rule_ids=[crossing.rule_id])
        )
        return any(e.event_id == crossing.event_id for e in page.events)

    await wait_for(stored_crossing, 30.0, "the streamed crossing stored")


def test_services_run_as_their_own_nats_users(
    stack: dict[str, Any], embedded_servers: EmbeddedServers, nats_credentials_file: Path | None
) -> None:
    """After the end-to-end run above, which needed every service's subjects: each service is connected as
    its role's user (the server says so), nothing was refused, and no password is in any log."""
    nats = embedded_servers.nats
    assert nats is not None and nats.monitoring_url and nats_credentials_file is not None, (
        "needs the session's embedded NATS (NATS_URL names an external server)"
    )
    with urllib.request.urlopen(f"{nats.monitoring_url.rstrip('/')}/connz?auth=true&limit=4096") as r:
        connections = json.load(r)["connections"]
    users = collections.defaultdict(set)
    for conn in connections:
        users[conn.get("name", "")].add(conn.get("authorized_user"))
    agent = users.keys() & {f"decoder-agent-{stack['state']['site']}-{socket.gethostname()}"}
    decoders = [
        name for name in users if name.startswith("decoder-") and not name.startswith("decoder-agent")
    ]
    assert agent and decoders, f"no decoder agent or decoder process connected: {sorted(users)}"
    expected = {
        **{name: "vap-decoder-agent" for name in agent},
        **{name: "vap-decoder-channel" for name in decoders},
        "vap-inference": "vap-inference",
        "vap-tracker": "vap-tracker",
        "vap-control": "vap-control",
        "vap-web": "vap-web",
    }
    for name, user in expected.items():
        # Other tests of the session share this server and connect as its admin user under the same client
        # names (an in-process control is "vap-control" too); the stack's processes never get the admin
        # password (vap up hands each child only its role's), so admin connections are not theirs.
        seen = users.get(name, set()) - {"vap-admin"}
        assert seen == {user}, f"{name} connected as {users.get(name)}, not {user}"
    proc: StackProcess = stack["proc"]
    logs = {path: path.read_text(errors="replace") for path in (proc.data_dir / "logs").glob("*.log")}
    logs[proc.output] = proc.text()
    passwords = [c.password for c in load_credentials_file(nats_credentials_file).values()]
    for path, text in logs.items():
        assert "permissions violation" not in text.lower(), f"{path.name}: a subject was refused"
        assert not any(pw in text for pw in passwords), f"{path.name} holds a NATS password"


def _status_of(proc: StackProcess, sid: str, data: list[str]) -> str:
    got = proc.cli("scenario", "get", sid, *data)
    assert got.returncode == EXIT_OK, got.stderr
    return str(json.loads(got.stdout)["status"]).removeprefix("SCENARIO_STATUS_")


def _wait_status(proc: StackProcess, sid: str, data: list[str], want: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = _status_of(proc, sid, data)
        if seen == want:
            return
        assert seen != "FAILED", f"scenario {sid} FAILED while waiting for {want}:\n{proc.text()[-3000:]}"
        time.sleep(0.3)
    raise AssertionError(f"scenario {sid} is {seen}, not {want}, after {timeout} s")


def test_cli_scenario_lifecycle(stack: dict[str, Any], rtsp_camera: RtspCameraFactory) -> None:
    """`vap scenario create|get|start|update|stop|delete` on a third camera (behind RTSP credentials)."""
    proc: StackProcess = stack["proc"]
    data = ["--data-dir", str(proc.data_dir)]
    password = f"pw-{uuid.uuid4().hex[:10]}"
    cam = rtsp_camera(VIDEO, path="cam-cli", user="viewer", password=password)
    outputs: list[str] = []

    def vap(*args: str) -> subprocess.CompletedProcess[str]:
        done = proc.cli(*args, *data)
        outputs.append(done.stdout + done.stderr)
        return done

    key = f"cli-test-{uuid.uuid4().hex[:8]}"
    create = ("scenario", "create", "--url", cam.url, "--name", "cli-cam", "--fps", "2", "--model", MODEL)
    created = vap(*create, "--request-id", key)
    assert created.returncode == EXIT_OK, created.stderr
    sid = created.stdout.split()[0]
    try:
        assert str(uuid.UUID(sid)) == sid and created.stdout.startswith(f"{sid} created:"), created.stdout
        # The same client request id: the same scenario, not a second one.
        again = vap(*create, "--request-id", key)
        assert again.returncode == EXIT_OK and again.stdout.split()[0] == sid, again.stdout + again.stderr
        assert "exists" in again.stdout
        listed = vap("scenario", "list", "--json")
        assert [s["id"] for s in json.loads(listed.stdout)].count(sid) == 1
        got = json.loads(vap("scenario", "get", sid).stdout)
        assert got["name"] == "cli-cam"
        assert got["source"]["redacted_url"].startswith("rtsp://***@")
        assert got["status"] == "SCENARIO_STATUS_INACTIVE"

        started = vap("scenario", "start", sid, "--wait", "30")
        assert started.returncode == EXIT_OK, started.stderr
        assert f"{sid}: STREAMING" in started.stdout, started.stdout  # video flows, not just ACTIVE
        _wait_status(proc, sid, data, "ACTIVE")  # the decoder logged in with the credentials
        # Start is idempotent: a second start of a running scenario is a no-op, not an error.
        assert vap("scenario", "start", sid).returncode == EXIT_OK
        # Live changes: name and confidence threshold, applied while ACTIVE.
        updated = vap("scenario", "update", sid, "--name", "cli-cam-2", "--confidence", "0.55")
        assert updated.returncode == EXIT_OK and "revision" in updated.stdout, updated.stderr
        got = json.loads(vap("scenario", "get", sid).stdout)
        assert got["name"] == "cli-cam-2"
        assert got["pipeline"]["confidence_threshold"] == pytest.approx(0.55)
        assert got["status"] == "SCENARIO_STATUS_ACTIVE"
        # Invalid or impossible requests: friendly messages, the documented exit codes, no traceback.
        bad_threshold = vap("scenario", "update", sid, "--confidence", "1.5")
        assert bad_threshold.returncode == EXIT_USAGE, bad_threshold.stderr
        assert "confidence_threshold" in bad_threshold.stderr
        nothing = vap("scenario", "update", sid)
        assert nothing.returncode == EXIT_USAGE and "nothing to update" in nothing.stderr
        while_running = vap("scenario", "delete", sid)
        assert while_running.returncode == EXIT_STATE, while_running.stderr
        assert "stop it first" in while_running.stderr
        for failed in (bad_threshold, nothing, while_running):
            assert failed.stderr.startswith("vap: error:") and "Traceback" not in failed.stderr

        stopped = vap("scenario", "stop", sid)
        assert stopped.returncode == EXIT_OK, stopped.stderr
        _wait_status(proc, sid, data, "INACTIVE")
        deleted = vap("scenario", "delete", sid)
        assert deleted.returncode == EXIT_OK and "deleted" in deleted.stdout, deleted.stderr
        gone = vap("scenario", "get", sid)
        assert gone.returncode == EXIT_NOT_FOUND and "not found" in gone.stderr
        sid = ""
    finally:
        if sid:
            proc.cli("scenario", "delete", sid, "--force", *data)
    for text in outputs:
        assert password not in text, text
    # The URL was sealed with the key `vap up` made in its data dir (0600) for control and the decoder agent;
    # no service's log holds the password.
    key_file = proc.data_dir / "secrets" / "camera.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    for log in (proc.data_dir / "logs").glob("*.log"):
        assert password not in log.read_text(errors="replace"), log


def test_cli_watch(stack: dict[str, Any], tmp_path: Path) -> None:
    """`vap watch --duration` prints a summary of both cameras' tracked people and exits 0; so does Ctrl+C."""
    proc: StackProcess = stack["proc"]
    data = ["--data-dir", str(proc.data_dir)]
    # Ctrl+C: started first, runs alongside the --duration watch.
    err = tmp_path / "watch.err"
    with err.open("w") as err_file:
        interrupted = subprocess.Popen(
            [sys.executable, "-m", "vap_stack.cli", "watch", "--display", "lines", *data],
            env=proc.env,
            cwd=proc.workdir,
            stdout=subprocess.PIPE,
            stderr=err_file,
            text=True,
        )
    try:
        timed = proc.cli("watch", "--display", "lines", "--duration", "4", *data)
        assert timed.returncode == EXIT_OK, timed.stderr
        summary = {
            line.split()[1].rstrip(":"): line
            for line in timed.stdout.splitlines()
            if line.startswith("summary ")
        }
        assert set(summary) == {"cam-a", "cam-b"}, timed.stdout
        tracks = {cam: re.search(r" ids_seen=(\d+) ", line) for cam, line in summary.items()}
        assert all(m is not None and int(m[1]) > 0 for m in tracks.values()), timed.stdout
        assert "watching cam-a, cam-b" in err.read_text()  # the watch under test is past its setup
        interrupted.send_signal(signal.SIGINT)
        out, _ = interrupted.communicate(timeout=15)
    finally:
        if interrupted.poll() is None:
            interrupted.kill()
            interrupted.wait()
    assert interrupted.returncode == EXIT_OK, err.read_text()
    assert "summary cam-a:" in out and "summary cam-b:" in out, out
    assert "Traceback" not in err.read_text()


A_TO_B = analytics_pb2.CROSSING_DIRECTION_A_TO_B
B_TO_A = analytics_pb2.CROSSING_DIRECTION_B_TO_A


async def _status_is(api: control_pb2_grpc.ControlServiceAsyncStub, sid: str, want: str) -> bool:
    got = await api.GetScenario(control_pb2.GetScenarioRequest(scenario_id=sid), timeout=10)
    return bool(scenario_pb2.ScenarioStatus.Name(got.scenario.status).endswith(want))


def _web_get(stack: dict[str, Any], path: str, token: str) -> tuple[int, dict[str, str], bytes]:
    base = stack["state"]["web"]
    assert base, "the stack's live web view did not start"
    parts = urlsplit(base.rstrip("/") + path)
    conn = http.client.HTTPConnection(parts.netloc, timeout=15)
    try:
        conn.request("GET", parts.path, headers={"Authorization": f"Bearer {token}"})
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        conn.close()


def _by_line(pairs: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    return dict(collections.Counter(pairs))


async def _counted(
    api: control_pb2_grpc.ControlServiceAsyncStub, sid: str, start_ns: int
) -> dict[tuple[str, int], int]:
    """QueryCounts since ``start_ns`` (all pages), per (line, direction)."""
    from vap_common.counts import totals

    window = common_pb2.TimeRange()
    window.start_time.FromNanoseconds(start_ns)
    request = control_pb2.QueryCountsRequest(scenario_id=sid, time_range=window, page_size=1000)
    counts = list((await api.QueryCounts(request, timeout=10)).counts)
    out: dict[tuple[str, int], int] = {}
    for rule, t in totals(counts).items():
        out[(rule, A_TO_B)], out[(rule, B_TO_A)] = t.a_to_b, t.b_to_a
    return {k: v for k, v in out.items() if v}


async def _queried_events(
    api: control_pb2_grpc.ControlServiceAsyncStub, sid: str, start_ns: int
) -> dict[tuple[str, int], int]:
    """QueryEvents' line crossings since ``start_ns`` (all pages), per (line, direction)."""
    window = common_pb2.TimeRange()
    window.start_time.FromNanoseconds(start_ns)
    request = control_pb2.QueryEventsRequest(scenario_id=sid, time_range=window, page_size=500)
    pairs: list[tuple[str, int]] = []
    while True:
        page = await api.QueryEvents(request, timeout=10)
        pairs += [(e.rule_id, e.line_crossing.direction) for e in page.events if e.HasField("line_crossing")]
        if not page.next_page_token:
            return _by_line(pairs)
        request.page_token = page.next_page_token


async def test_every_surface_shows_the_same_counts(
    stack: dict[str, Any], api: control_pb2_grpc.ControlServiceAsyncStub, rtsp_camera: RtspCameraFactory
) -> None:
    """One scene, every place a count is shown: StreamEvents, QueryEvents, QueryCounts (5 s intervals, the
    open one included), the web camera list and `vap watch`. While the scene runs, QueryCounts and
    QueryEvents agree for the same window at any moment (the open interval is counted from its events:
    before, it read 0 while its events were already stored and streamed, and the pages disagreed, e.g.
    2 vs 9); after the stop every surface gives the same numbers, and a window that starts mid-run
    (interval-aligned) agrees too."""
    from vap_stack.config import Camera

    proc: StackProcess = stack["proc"]
    cam = rtsp_camera(VIDEO, path="cam-counts")
    streamed: list[tuple[str, str, int, int]] = []  # scenario, line, direction, event time

    async def stream_events() -> None:
        async for item in api.StreamEvents(control_pb2.StreamEventsRequest(), timeout=600):
            ev = item.event
            if ev.HasField("line_crossing"):
                streamed.append((ev.scenario_id, ev.rule_id, ev.line_crossing.direction, ev.event_time_ns))

    listener = asyncio.ensure_future(stream_events())
    await asyncio.sleep(1.0)  # the subscription is in place before the scenario exists
    spec = Camera(
        id="counts", url=cam.url, fps=5, model=MODEL, confidence=0.4, lines=LINES, count_interval_s=5
    ).scenario(cam.url, site="e2e")
    sid = (
        await api.CreateScenario(control_pb2.CreateScenarioRequest(scenario=spec, start=True), timeout=30)
    ).scenario.id
    start_ns = time.time_ns() - 60 * 10**9  # before anything happened
    try:
        # While it runs: the same window through both queries, taken between two identical count reads.
        agreed = 0
        deadline = time.monotonic() + 90
        while agreed < 3 and time.monotonic() < deadline:
            before = await _counted(api, sid, start_ns)
            events = await _queried_events(api, sid, start_ns)
            after = await _counted(api, sid, start_ns)
            if before == after and sum(after.values()) > agreed:
                assert events == after, f"while running: events {events} vs counts {after}"
                agreed = sum(after.values())
            await asyncio.sleep(1.0)
        assert agreed >= 3, f"too few crossings to compare ({agreed}): the scene must cross the lines"
        await api.StopScenario(control_pb2.StopScenarioRequest(scenario_id=sid), timeout=30)

        async def settled() -> bool:
            mine = _by_line([(line, d) for s, line, d, _ in streamed if s == sid])
            return bool(mine) and await _queried_events(api, sid, start_ns) == mine

        await wait_for(settled, 30.0, "every streamed event to be stored")
        truth = _by_line([(line, d) for s, line, d, _ in streamed if s == sid])
        assert await _counted(api, sid, start_ns) == truth
        # A window starting mid-run at an interval boundary: both queries count the same events.
        times = sorted(t for s, _, _, t in streamed if s == sid)
        mid = times[len(times) // 2]
        mid -= mid % (5 * 10**9)
        later = _by_line([(line, d) for s, line, d, t in streamed if s == sid and t >= mid])
        assert await _counted(api, sid, mid) == later == await _queried_events(api, sid, mid)
        # The web camera list (last hour) ...
        status, _, body = _web_get(stack, "/api/cameras", proc.token())
        assert status == 200
        row = next(c for c in json.loads(body) if c["id"] == sid)
        web = {(rule, A_TO_B): c["a_to_b"] for rule, c in row["counts"].items()}
        web |= {(rule, B_TO_A): c["b_to_a"] for rule, c in row["counts"].items()}
        assert {k: v for k, v in web.items() if v} == truth
        # ... and `vap watch` (last hour).
        data = ["--data-dir", str(proc.data_dir)]
        watched = proc.cli("watch", "--scenario", sid, "--display", "lines", "--duration", "4", *data)
        assert watched.returncode == EXIT_OK, watched.stderr
        summary = next(line for line in watched.stdout.splitlines() if line.startswith("summary "))
        shown = {
            (rule, direction): int(n)
            for rule, a, na, b, nb in re.findall(r"(\w+) (\w+):(\d+) (\w+):(\d+)", summary)
            for direction, n in ((A_TO_B, na), (B_TO_A, nb))
        }
        assert {k: v for k, v in shown.items() if v} == truth, summary
        # ... and `vap counts` / `vap events` (by the scenario's name), over the whole run.
        got = (await api.GetScenario(control_pb2.GetScenarioRequest(scenario_id=sid), timeout=10)).scenario
        labels = {r.rule_id: (r.line.a_to_b_label, r.line.b_to_a_label) for r in got.analytics.rules}
        counted = proc.cli("counts", got.name, "--since", "2h", "--json", *data)
        assert counted.returncode == EXIT_OK, counted.stderr
        cli_counts: collections.Counter[tuple[str, int]] = collections.Counter()
        for row in json.loads(counted.stdout):
            a, b = labels[row["rule"]]
            cli_counts[(row["rule"], A_TO_B)] += row[a]
            cli_counts[(row["rule"], B_TO_A)] += row[b]
        assert {k: v for k, v in cli_counts.items() if v} == truth
        listed = proc.cli("events", sid, "--since", "2h", "--kind", "line", "--json", *data)
        assert listed.returncode == EXIT_OK, listed.stderr
        cli_events = _by_line(
            [
                (e["rule_id"], analytics_pb2.CrossingDirection.Value(e["line_crossing"]["direction"]))
                for e in json.loads(listed.stdout)
            ]
        )
        assert cli_events == truth
        assert proc.cli("counts", "no-such-camera", *data).returncode == EXIT_NOT_FOUND
        bad = proc.cli("counts", sid, "--since", "yesterday-ish", *data)
        assert bad.returncode == EXIT_USAGE and "--since" in bad.stderr
    finally:
        listener.cancel()
        with contextlib.suppress(BaseException):
            await listener
        with contextlib.suppress(Exception):
            await api.StopScenario(control_pb2.StopScenarioRequest(scenario_id=sid), timeout=30)
            await wait_for(lambda: _status_is(api, sid, "INACTIVE"), 30.0, "the scenario to stop")
            await api.DeleteScenario(
                control_pb2.DeleteScenarioRequest(scenario_id=sid, force=True), timeout=30
            )
