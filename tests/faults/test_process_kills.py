"""kill -9 under load, one process kind after another, in a real `vap up` stack with two cameras on real RTSP
servers and its own NATS and PostgreSQL (restarted on the same port and data after their kill, as a system
supervisor would). After each kill the pipeline must deliver fresh results of both cameras to PostgreSQL
again (the recovery time, from the kill to the first newly stored frame of the slower camera, is printed and
goes in the README; only a generous deadline is asserted). At the end: both scenarios still exist and run,
no frame or detection is stored twice, every channel has exactly one ring, and after Ctrl+C none is left."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from vap_common import subjects
from vap_common.embedded_nats import EmbeddedNats
from vap_common.embedded_pg import EmbeddedPostgres
from vap_common.paths import sample_video
from vap_common.ports import free_tcp_port
from vap_control import lifecycle
from vap_rtspcam import RtspCamera, unavailable_reason
from vap_shmring import SHM_DIR, ring_name
from vap_stack.testing import StackProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

VIDEO = sample_video("vtest-576p25.mp4")
MODEL = "ssdlite-mbv2-person-300"
RECOVERY_DEADLINE_S = 90.0  # generous: 2 shared cores, supervisor backoff, reconnect backoffs


class Servers:
    """This module's NATS and PostgreSQL, each restartable on the same port and data directory."""

    def __init__(self, directory: Path) -> None:
        self.nats = EmbeddedNats(directory / "nats", port=free_tcp_port(), monitoring=False)
        self.pg = EmbeddedPostgres(directory / "pg", durable=False, port=free_tcp_port())
        self.nats_url = self.nats.start()
        self.database_url = self.pg.start()

    def kill_nats(self) -> None:
        assert self.nats.pid is not None
        os.kill(self.nats.pid, signal.SIGKILL)
        self.nats.stop()  # reaps it
        self.nats.start()

    def kill_postgres(self) -> None:
        assert self.pg.pid is not None
        os.kill(self.pg.pid, signal.SIGKILL)
        self.pg.stop()  # reaps it and kills the orphaned backends
        self.pg.start()

    def close(self) -> None:
        self.nats.stop()
        self.pg.stop()


def children(parent: int) -> dict[int, str]:
    """pid -> command line of the live children of ``parent``."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(") ", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == parent:
            found[int(entry.name)] = cmdline
    return found


def child_pid(parent: int, marker: str, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [pid for pid, cmd in children(parent).items() if marker in cmd]
        if pids:
            return pids[0]
        time.sleep(0.2)
    raise AssertionError(f"no child of {parent} running {marker!r}")


def stored_since(database_url: str, since_ns: int) -> dict[str, int]:
    """Frames stored per scenario with a capture time after ``since_ns`` (tracked frames: the whole chain)."""
    try:
        with psycopg.connect(database_url, connect_timeout=3) as conn:
            rows = conn.execute(
                "SELECT scenario_id::text, count(*) FROM tracked_frames WHERE capture_time_ns > %s "
                "GROUP BY scenario_id",
                (since_ns,),
            ).fetchall()
    except psycopg.OperationalError:
        return {}
    return {sid: int(n) for sid, n in rows}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    registry = pytest.importorskip("vap_models.catalogue")
    from vap_inference.testing import missing_model_reason

    if reason := missing_model_reason(registry.SSDLITE):
        pytest.skip(reason)
    if reason := unavailable_reason():
        pytest.skip(reason)
    if not VIDEO.is_file():
        pytest.skip(f"test video {VIDEO} not found (set VAP_SAMPLE_DATA_DIR)")
    work = tmp_path_factory.mktemp("kills")
    servers = Servers(work / "servers")
    cams = {cid: RtspCamera(VIDEO, path=cid, shared=True).start() for cid in ("k-a", "k-b")}
    config = {
        "site": f"kills-{uuid.uuid4().hex[:6]}",
        "data_dir": str(work / "data"),
        "ports": {"control": 0, "inference": 0, "metrics_base": 0},
        "cameras": [
            {"id": cid, "url": cam.url, "fps": 4, "model": MODEL, "confidence": 0.4}
            for cid, cam in cams.items()
        ],
        "inference": {"threads": 1, "default_model": MODEL},
        "tracker": {"reid": {"embedder": "hsv"}},
        "decoder": {
            "status_interval_s": 0.5,
            "read_timeout_s": 2.0,
            "backoff_max_s": 1.0,
            "restart_backoff_initial_s": 0.2,
            "restart_backoff_max_s": 1.0,
        },
        "control": {"reconcile_s": 0.5, "health_persist_s": 1.0, "retry_max_s": 1.0, "outbox_poll_s": 0.2},
    }
    # Each service as its own NATS user, as `vap up` runs them on its embedded server.
    env = {
        "NATS_URL": servers.nats_url,
        "DATABASE_URL": servers.database_url,
        "VAP_NATS_CREDENTIALS": str(servers.nats.credentials_file),
    }
    proc = StackProcess(config, work, env=env)
    try:
        state = proc.start(timeout=240)
        yield {"proc": proc, "state": state, "servers": servers}
    finally:
        status = proc.interrupt() if proc.proc is not None else None
        for cam in cams.values():
            cam.close()
        servers.close()
        assert status in (None, 0), f"vap up exited with {status}:\n{proc.text()[-3000:]}"


def _wait_fresh(stack: dict[str, Any], since_ns: int, what: str, count: int = 2) -> float:
    """Seconds until both scenarios stored ``count`` tracked frames captured after ``since_ns``."""
    proc: StackProcess = stack["proc"]
    scenarios = set(stack["state"]["scenarios"].values())
    start = time.monotonic()
    got: dict[str, int] = {}
    while time.monotonic() - start < RECOVERY_DEADLINE_S:
        got = stored_since(stack["servers"].database_url, since_ns)
        if all(got.get(sid, 0) >= count for sid in scenarios):
            return time.monotonic() - start
        assert proc.proc is not None and proc.proc.poll() is None, proc.text()[-3000:]
        time.sleep(0.25)
    raise AssertionError(
        f"no fresh results after {what} within {RECOVERY_DEADLINE_S} s: {got}\n{proc.text()[-3000:]}"
    )


def _channels(database_url: str) -> dict[str, str]:
    with psycopg.connect(database_url) as conn:
        return {str(sid): str(ch) for sid, ch in conn.execute("SELECT id, channel_id FROM scenarios")}


async def _publish_hostile(nats_url: str, channels_by_sid: dict[str, str]) -> int:
    """Undecodable bytes and well-formed messages with hostile values (NUL in text, NaN/inf boxes, extreme
    timestamps, 10 000 detections, unknown scenarios) on every result subject and the health subjects."""
    import nats

    from vap_proto.v1 import analytics_pb2, detection_pb2, health_pb2, tracking_pb2

    messages: list[tuple[str, bytes]] = []
    for sid, channel in channels_by_sid.items():
        for capture_ns in (2**63 - 1, -(2**63), 0):
            fd = detection_pb2.FrameDetections()
            fd.frame.channel_id, fd.frame.scenario_id = channel, sid
            fd.frame.capture_time_ns, fd.frame.sequence = capture_ns, 2**63 - 1
            d = fd.detections.add(class_name="per\x00son", confidence=float("nan"))
            d.box.x1, d.box.y2 = float("inf"), float("-inf")
            messages.append((subjects.detections(channel), fd.SerializeToString()))
            tf = tracking_pb2.TrackedFrame()
            tf.frame.CopyFrom(fd.frame)
            tf.tracks.add(track_id=2**64 - 1, class_name="\x00")
            messages.append((subjects.tracks(channel), tf.SerializeToString()))
        many = detection_pb2.FrameDetections()
        many.frame.channel_id, many.frame.scenario_id, many.frame.capture_time_ns = channel, sid, 1
        many.detections.extend(detection_pb2.Detection(class_name="x" * 50) for _ in range(10_000))
        messages.append((subjects.detections(channel), many.SerializeToString()))
        event = analytics_pb2.AnalyticsEvent(scenario_id=sid, event_id="\x00" * 3, channel_id=channel)
        messages.append((subjects.events(channel), event.SerializeToString()))
        health = health_pb2.ChannelHealth(
            channel_id=channel, scenario_id=sid, reason="\x00" * 10, pid=2**32 - 1
        )
        messages.append((subjects.channel_health(channel), health.SerializeToString()))
        for subject in (subjects.detections(channel), subjects.tracks(channel), subjects.events(channel)):
            messages.append((subject, b"\xff\xfe not protobuf"))
    stranger = str(uuid.uuid4())
    messages.append(
        (subjects.detections("no-such-channel"), detection_pb2.FrameDetections().SerializeToString())
    )
    messages.append((subjects.counts(stranger), b"\x0a\xff\xff\xff\xff\x0f"))
    nc = await nats.connect(nats_url, max_reconnect_attempts=0)
    try:
        for subject, payload in messages:
            await nc.publish(subject, payload)
        await nc.flush()
    finally:
        await nc.close()
    return len(messages)


def test_kill_each_process_kind_under_load(stack: dict[str, Any]) -> None:
    proc: StackProcess = stack["proc"]
    servers: Servers = stack["servers"]
    assert proc.proc is not None
    up = proc.proc.pid
    _wait_fresh(stack, 0, "start", count=5)

    def decoder() -> None:
        agent = child_pid(up, "vap_decoder agent")
        os.kill(child_pid(agent, "vap_decoder channel"), signal.SIGKILL)

    def service(marker: str) -> Callable[[], None]:
        return lambda: os.kill(child_pid(up, marker), signal.SIGKILL)

    kills: dict[str, Callable[[], None]] = {
        "decoder": decoder,
        "decoder agent": service("vap_decoder agent"),
        "inference": service("-m vap_inference"),
        "tracker": service("-m vap_tracker"),
        "control": service("-m vap_control"),
        "nats": servers.kill_nats,
        "postgresql": servers.kill_postgres,
    }
    recovery: dict[str, float] = {}
    for kind, kill in kills.items():
        killed_ns = time.time_ns()
        t0 = time.monotonic()
        kill()
        _wait_fresh(stack, killed_ns, f"kill -9 of {kind}")
        # From the kill: restarting NATS/PostgreSQL (what their supervisor would do) is part of recovering.
        recovery[kind] = round(time.monotonic() - t0, 1)
    print(f"\nrecovery after kill -9 (s, to fresh results of both cameras): {recovery}")
    # Issue 23: <= 5 s for any process on an idle machine; generous bounds here (a shared test machine).
    # A restarted decoder agent reports its start time, so control re-places its channels at once rather
    # than after the heartbeat timeout (11.1 s before).
    assert recovery["decoder agent"] <= 8.0, recovery

    # Hostile messages on the bus, as a broken or forged producer would publish them: nothing may crash and
    # nothing may stop the real results from being stored (a batch PostgreSQL refuses must not block it).
    channels_by_sid = _channels(servers.database_url)
    sent = asyncio.run(_publish_hostile(servers.nats_url, channels_by_sid))
    hostile_ns = time.time_ns()
    _wait_fresh(stack, hostile_ns, "hostile bus messages")
    # The forged health's pid (2^32 - 1) fits no Linux pid: recorded as unknown, not a failed update.
    control_log = (proc.data_dir / "logs" / "control.log").read_text(errors="replace")
    assert "out of range" not in control_log, control_log[-3000:]
    alive = {name: pid for name, pid in children(up).items() if "vap_" in pid}
    assert len(alive) >= 4, alive
    print(f"hostile bus messages sent: {sent}; pipeline still storing")

    scenarios = stack["state"]["scenarios"]
    with psycopg.connect(servers.database_url) as conn:
        statuses = dict(conn.execute("SELECT id::text, status FROM scenarios").fetchall())
        channels = [c for (c,) in conn.execute("SELECT channel_id FROM scenarios").fetchall()]
        doubled_frames = conn.execute(
            "SELECT scenario_id, channel_id, capture_time_ns, count(*) FROM frames "
            "GROUP BY 1, 2, 3 HAVING count(*) > 1"
        ).fetchall()
        doubled_detections = conn.execute(
            "SELECT f.scenario_id, f.sequence FROM frames f LEFT JOIN detections d USING "
            "(scenario_id, capture_time_ns, channel_id, stream_epoch, sequence) "
            "GROUP BY f.scenario_id, f.capture_time_ns, f.channel_id, f.stream_epoch, f.sequence, "
            "f.detection_count HAVING count(d.idx) <> f.detection_count"
        ).fetchall()
        doubled_tracks = conn.execute(
            "SELECT f.scenario_id, f.sequence FROM tracked_frames f LEFT JOIN tracks t USING "
            "(scenario_id, capture_time_ns, channel_id, stream_epoch, sequence) "
            "GROUP BY f.scenario_id, f.capture_time_ns, f.channel_id, f.stream_epoch, f.sequence, "
            "f.track_count HAVING count(t.track_id) <> f.track_count"
        ).fetchall()
        stored = conn.execute("SELECT count(*) FROM frames").fetchone()
    assert set(statuses) == set(scenarios.values()), statuses  # no scenario lost, none added
    assert set(statuses.values()) == {int(lifecycle.ACTIVE)}, statuses
    # Every service died of our SIGKILL only: no crash of a restarted one (SIGSEGV on restart was a bug).
    exits = re.findall(r"exited with status (-?\d+)", proc.text())
    assert exits and set(exits) == {"-9"}, exits
    assert not doubled_frames and not doubled_detections and not doubled_tracks
    assert stored is not None and stored[0] > 0
    print(f"frames stored: {stored[0]}")
    rings = {name for name in os.listdir(SHM_DIR) if name.startswith("vap-ring")}
    mine = {ring_name(c) for c in channels}
    assert mine <= rings, f"a channel lost its ring: {mine - rings}"

    assert proc.interrupt() == 0, proc.text()[-3000:]
    left = {name for name in os.listdir(SHM_DIR) if any(ring_name(c) in name for c in channels)}
    assert not left, f"rings left after the stack stopped: {left}"
