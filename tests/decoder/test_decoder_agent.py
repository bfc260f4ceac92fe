"""The decoder agent as it runs in production: a real process driven by AgentCommands over NATS
request/reply, supervising real decoder processes that read real RTSP servers on loopback.

Timeouts and backoffs are shortened (settings below) so that outages are detected and healed in seconds.
What each test proves is in its docstring.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from nats.aio.client import Client as NatsClient

from vap_common import subjects
from vap_common.paths import sample_video
from vap_common.ports import free_tcp_port
from vap_decoder.health import CONNECTING, FAILED, RECONNECTING, STOPPED, STREAMING
from vap_decoder.process import EXIT_FAILED
from vap_decoder.testing import (
    FAST_AGENT_SETTINGS as FAST,
)
from vap_decoder.testing import (
    AgentProcess,
    FrameWatch,
    HealthWatch,
    list_command,
    request,
    source_spec,
    start_command,
    stop_command,
)
from vap_proto.v1.agent_pb2 import AgentReply, AgentReplyCode, AgentStatus
from vap_rtspcam.fixtures import RtspCameraFactory
from vap_shmring import SHM_DIR, ring_name

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

OK = AgentReplyCode.AGENT_REPLY_CODE_OK
USER, PASSWORD = "admin", "Sup3r:secret@cam"
QUOTED = quote(PASSWORD, safe="")  # as it appears in a URL
VIDEO = sample_video("vtest-576p25.mp4")
# Short timeouts and backoffs: every outage in these tests heals within a few seconds.


@pytest.fixture(scope="module")
def agent(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    proc = AgentProcess(nats_url, tmp_path_factory.mktemp("agent") / "agent.log", max_workers=8, **FAST)
    proc.start()
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log_text()[-3000:]
        log = proc.log_text()
        assert PASSWORD not in log and QUOTED not in log  # nothing the agent or its decoders logged holds it
        assert "***@127.0.0.1" in log  # URLs are logged, redacted


def ring_exists(channel_id: str) -> bool:
    return Path(SHM_DIR, ring_name(channel_id)).exists()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of the agent counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


async def start(nc: NatsClient, agent: AgentProcess, channel_id: str, url: str, **spec: object) -> AgentReply:
    command = start_command(channel_id, source_spec(url, **spec), agent_id=agent.agent_id)
    return await request(nc, agent.agent_id, command)


async def stop(nc: NatsClient, agent: AgentProcess, channel_id: str) -> AgentReply:
    return await request(nc, agent.agent_id, stop_command(channel_id, agent_id=agent.agent_id))


async def test_two_channels_stream_at_once_and_stop_cleanly(
    agent: AgentProcess, rtsp_camera: RtspCameraFactory, nats_client: NatsClient, channel_id: str
) -> None:
    """Two cameras (one with credentials) run as two decoder processes at once; replies and listings carry
    pid, ring and a redacted URL, never the password; StopChannel ends each process and removes its ring."""
    cams = [rtsp_camera(VIDEO, user=USER, password=PASSWORD), rtsp_camera(VIDEO)]
    ids = [f"{channel_id}-a", f"{channel_id}-b"]
    async with FrameWatch(nats_client, ids[0]) as fa, FrameWatch(nats_client, ids[1]) as fb:
        replies = [await start(nats_client, agent, cid, cam.url) for cid, cam in zip(ids, cams, strict=True)]
        for reply, cid in zip(replies, ids, strict=True):
            assert reply.code == OK, reply.message
            assert reply.channel.pid > 0 and reply.channel.ring == ring_name(cid)
            assert reply.channel.ring_slots == 8
        assert replies[0].channel.redacted_url.startswith("rtsp://***@127.0.0.1:")
        assert QUOTED not in replies[0].SerializeToString().decode("utf-8", "replace")
        await fa.wait_count(10, timeout=15)
        await fb.wait_count(10, timeout=15)
        pids = [r.channel.pid for r in replies]
        assert len(set(pids)) == 2 and all(pid_alive(p) for p in pids)
        listing = await request(nats_client, agent.agent_id, list_command())
        listed = {c.channel_id: c for c in listing.channels.channels}
        assert set(ids) <= set(listed)
        assert all(listed[cid].health.state == STREAMING for cid in ids)
        assert listing.channels.max_workers == 8
        assert QUOTED not in listing.SerializeToString().decode("utf-8", "replace")
        for cid, pid in zip(ids, pids, strict=True):
            reply = await stop(nats_client, agent, cid)
            assert reply.code == OK
            assert reply.channel.health.state == STOPPED and reply.channel.exit_code == 0
            assert not ring_exists(cid) and not pid_alive(pid)


async def test_camera_killed_and_restarted_reconnects(
    agent: AgentProcess, rtsp_camera: RtspCameraFactory, nats_client: NatsClient, channel_id: str
) -> None:
    """A camera that dies (SIGKILL) and comes back on the same port: health goes STREAMING -> RECONNECTING
    (with the reason) -> STREAMING, frames resume in a new stream epoch, the reconnect is counted."""
    cam = rtsp_camera(VIDEO)
    async with HealthWatch(nats_client, channel_id) as health, FrameWatch(nats_client, channel_id) as frames:
        assert (await start(nats_client, agent, channel_id, cam.url)).code == OK
        await health.wait_state(STREAMING, timeout=10)
        cam.kill()
        mark = len(health.reports)
        lost = await health.wait_state(RECONNECTING, timeout=5, since=mark)
        assert lost.reason
        await asyncio.sleep(1.0)  # a few failed attempts while the camera is down
        cam.start()
        mark = len(health.reports)
        back = await health.wait_state(STREAMING, timeout=10, since=mark)
        await frames.wait_count(5, timeout=10, where=lambda ref: ref.stream_epoch >= 1)
        assert back.reconnect_count >= 1 and back.stream_epoch >= 1
        assert health.states()[:4] == [CONNECTING, STREAMING, RECONNECTING, STREAMING]
        assert (await stop(nats_client, agent, channel_id)).code == OK


async def test_hung_camera_is_detected_and_recovers(
    agent: AgentProcess, rtsp_camera: RtspCameraFactory, nats_client: NatsClient, channel_id: str
) -> None:
    """A camera that hangs (SIGSTOP: TCP open, no data) is detected by the read timeout and reported
    RECONNECTING; after SIGCONT the channel streams again."""
    cam = rtsp_camera(VIDEO)
    async with HealthWatch(nats_client, channel_id) as health:
        assert (await start(nats_client, agent, channel_id, cam.url)).code == OK
        await health.wait_state(STREAMING, timeout=10)
        cam.pause()
        try:
            mark = len(health.reports)
            t0 = time.monotonic()
            hung = await health.wait_state(RECONNECTING, timeout=8, since=mark)
            detected_s = time.monotonic() - t0
            await asyncio.sleep(1.0)
        finally:
            cam.resume()
        mark = len(health.reports)
        await health.wait_state(STREAMING, timeout=15, since=mark)
        assert "timed out" in hung.reason or "stalled" in hung.reason
        assert detected_s < 5.0  # read timeout 1 s (+ FFmpeg's own polling)
        assert (await stop(nats_client, agent, channel_id)).code == OK


async def test_bad_sources_fail_with_a_reason_and_the_agent_keeps_running(
    agent: AgentProcess, nats_client: NatsClient, channel_id: str, tmp_path: Path
) -> None:
    """Missing file -> FAILED ('file not found'), not restarted; unsupported scheme and a URL without host ->
    INVALID_ARGUMENT and a FAILED health report; connection refused -> RECONNECTING with backoff, then FAILED
    once max_reconnect_attempts is spent. The agent answers throughout."""
    missing, scheme, refused = f"{channel_id}-missing", f"{channel_id}-ftp", f"{channel_id}-refused"
    async with (
        HealthWatch(nats_client, missing) as h_missing,
        HealthWatch(nats_client, scheme) as h_scheme,
        HealthWatch(nats_client, refused) as h_refused,
    ):
        reply = await start(nats_client, agent, missing, str(tmp_path / "no-such-video.mp4"))
        assert reply.code == OK  # the process runs and reports the failure
        failed = await h_missing.wait_state(FAILED, timeout=10)
        assert "file not found" in failed.reason

        reply = await start(nats_client, agent, scheme, f"ftp://{USER}:{QUOTED}@127.0.0.1/cam.mp4")
        assert reply.code == AgentReplyCode.AGENT_REPLY_CODE_INVALID_ARGUMENT
        assert "unsupported source scheme 'ftp'" in reply.message and QUOTED not in reply.message
        failed = await h_scheme.wait_state(FAILED, timeout=5)
        assert "unsupported" in failed.reason and QUOTED not in failed.reason

        reply = await start(nats_client, agent, f"{channel_id}-nohost", "rtsp:///cam")
        assert reply.code == AgentReplyCode.AGENT_REPLY_CODE_INVALID_ARGUMENT and "no host" in reply.message

        url = f"rtsp://{USER}:{QUOTED}@127.0.0.1:{free_tcp_port()}/cam"
        assert (await start(nats_client, agent, refused, url, max_reconnect_attempts=2)).code == OK
        retrying = await h_refused.wait_state(RECONNECTING, timeout=10)
        gave_up = await h_refused.wait_state(FAILED, timeout=15)
        assert retrying.next_retry_time_ns > 0 and "refused" in retrying.reason.lower()
        assert "gave up after 2 reconnect attempts" in gave_up.reason and QUOTED not in gave_up.reason

        await asyncio.sleep(0.5)  # a restart would show by now
        listing = await request(nats_client, agent.agent_id, list_command())
        listed = {c.channel_id: c for c in listing.channels.channels}
        assert listed[missing].pid == 0 and listed[missing].exit_code == EXIT_FAILED
        assert listed[missing].health.process_restarts == 0
        assert listed[missing].health.state == FAILED and listed[refused].health.state == FAILED
        assert scheme not in listed
        for cid in (missing, refused):
            assert (await stop(nats_client, agent, cid)).code == OK


async def test_killed_decoder_process_is_restarted(
    agent: AgentProcess, rtsp_camera: RtspCameraFactory, nats_client: NatsClient, channel_id: str
) -> None:
    """SIGKILL of a decoder process: the agent reports it (RECONNECTING, 'killed by SIGKILL'), starts a new
    process after its backoff, the channel streams again from the new pid and the restart is counted."""
    cam = rtsp_camera(VIDEO)
    async with HealthWatch(nats_client, channel_id) as health, FrameWatch(nats_client, channel_id) as frames:
        reply = await start(nats_client, agent, channel_id, cam.url)
        first_pid = reply.channel.pid
        await health.wait_state(STREAMING, timeout=10)
        os.kill(first_pid, signal.SIGKILL)
        crashed = await health.wait_state(RECONNECTING, timeout=5, where=lambda h: h.pid == 0)
        assert "killed by SIGKILL" in crashed.reason and crashed.process_restarts == 1
        back = await health.wait_state(STREAMING, timeout=15, where=lambda h: h.pid not in (0, first_pid))
        assert back.process_restarts == 1
        mark = len(frames.frames)
        await frames.wait_count(mark + 5, timeout=10)
        listing = await request(nats_client, agent.agent_id, list_command())
        entry = next(c for c in listing.channels.channels if c.channel_id == channel_id)
        assert entry.pid == back.pid and entry.health.process_restarts == 1
        assert (await stop(nats_client, agent, channel_id)).code == OK
        assert not ring_exists(channel_id) and not pid_alive(back.pid)


async def test_commands_are_idempotent_and_replies_are_published(
    agent: AgentProcess, rtsp_camera: RtspCameraFactory, nats_client: NatsClient, channel_id: str
) -> None:
    """A repeated command id gets the first reply; starting a running channel with the same spec is OK, with
    another spec ALREADY_EXISTS; stopping an unknown channel is OK; a command for another agent is refused;
    every reply also goes to the agent's replies subject."""
    cam = rtsp_camera(VIDEO)
    published: list[AgentReply] = []

    async def on_reply(msg: object) -> None:
        published.append(AgentReply.FromString(msg.data))  # type: ignore[attr-defined]

    sub = await nats_client.subscribe(subjects.agent_replies(agent.agent_id), cb=on_reply)
    try:
        command = start_command(channel_id, source_spec(cam.url), agent_id=agent.agent_id)
        first = await request(nats_client, agent.agent_id, command)
        again = await request(nats_client, agent.agent_id, command)
        assert first.code == OK and again == first
        same = await start(nats_client, agent, channel_id, cam.url)
        assert same.code == OK and same.message == "already running" and same.channel.pid == first.channel.pid
        other = await start(nats_client, agent, channel_id, cam.url, target_fps=5.0)
        assert other.code == AgentReplyCode.AGENT_REPLY_CODE_ALREADY_EXISTS
        unknown = await stop(nats_client, agent, f"{channel_id}-unknown")
        assert unknown.code == OK and "not running" in unknown.message
        wrong = start_command(channel_id, source_spec(cam.url), agent_id="some-other-agent")
        refused = await request(nats_client, agent.agent_id, wrong)
        assert refused.code == AgentReplyCode.AGENT_REPLY_CODE_INVALID_ARGUMENT
        assert (await stop(nats_client, agent, channel_id)).code == OK
        await nats_client.flush()
        await asyncio.sleep(0.2)
        assert first.command_id in {r.command_id for r in published}
        assert all(r.agent_id == agent.agent_id for r in published)
    finally:
        await sub.unsubscribe()


async def test_metrics_and_status_report_each_channel_without_urls(
    agent: AgentProcess, rtsp_camera: RtspCameraFactory, nats_client: NatsClient, channel_id: str
) -> None:
    """Prometheus metrics per channel (frames decoded/published/skipped, fps, decode ms, reconnects, state)
    labelled by channel id only, and the AgentStatus heartbeat listing the channel."""
    cam = rtsp_camera(VIDEO, user=USER, password=PASSWORD)
    statuses: list[AgentStatus] = []

    async def on_status(msg: object) -> None:
        statuses.append(AgentStatus.FromString(msg.data))  # type: ignore[attr-defined]

    sub = await nats_client.subscribe(subjects.agent_status(agent.agent_id), cb=on_status)
    try:
        async with HealthWatch(nats_client, channel_id) as health:
            assert (await start(nats_client, agent, channel_id, cam.url, target_fps=5.0)).code == OK
            await health.wait_state(STREAMING, timeout=10)
            await health.wait_until(
                lambda: (
                    health.latest is not None and health.latest.frames_total >= 5 and health.latest.fps > 0
                ),
                timeout=10,
                what="5 published frames",
            )
            url = f"http://127.0.0.1:{agent.metrics_port}/metrics"
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        label = f'channel="{channel_id}"'
        lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if label in line}
        assert lines[f"vap_decoder_frames_published_total{{{label}}}"] >= 5
        assert lines[f"vap_decoder_frames_decoded_total{{{label}}}"] >= 5
        assert lines[f"vap_decoder_frames_skipped_total{{{label}}}"] > 0  # 25 fps sampled to 5
        assert lines[f'vap_decoder_channel_state{{{label},state="streaming"}}'] == 1.0
        assert lines[f'vap_decoder_channel_state{{{label},state="reconnecting"}}'] == 0.0
        for name in ("fps", "decode_fps", "decode_ms", "reconnects_total", "process_restarts_total"):
            assert f"vap_decoder_{name}{{{label}}}" in lines
        assert "rtsp://" not in text and QUOTED not in text
        assert "vap_decoder_max_workers 8.0" in text
        deadline = time.monotonic() + 5
        while not any(channel_id in {c.channel_id for c in s.channels} for s in statuses):
            assert time.monotonic() < deadline, "no AgentStatus listing the channel"
            await asyncio.sleep(0.1)
        status = statuses[-1]
        assert status.max_workers == 8 and status.pid > 0 and status.node_id
        assert QUOTED not in status.SerializeToString().decode("utf-8", "replace")
        assert (await stop(nats_client, agent, channel_id)).code == OK
    finally:
        await sub.unsubscribe()


async def test_max_workers_is_enforced_and_agent_shutdown_stops_its_decoders(
    nats_url: str, nats_client: NatsClient, clip: Path, channel_id: str, tmp_path: Path
) -> None:
    """Beyond MAX_WORKERS a start is refused with a clear error and nothing is started; after a stop there is
    room again. SIGTERM to the agent stops its decoder processes and removes their rings."""
    small = AgentProcess(nats_url, tmp_path / "agent.log", max_workers=1, **FAST).start()
    try:
        a, b = f"{channel_id}-a", f"{channel_id}-b"
        spec = {"realtime": True, "loop": True}
        first = await start(nats_client, small, a, str(clip), **spec)
        assert first.code == OK
        refused = await start(nats_client, small, b, str(clip), **spec)
        assert refused.code == AgentReplyCode.AGENT_REPLY_CODE_MAX_WORKERS
        assert "MAX_WORKERS = 1" in refused.message and b in refused.message
        assert not ring_exists(b)
        listing = await request(nats_client, small.agent_id, list_command())
        assert [c.channel_id for c in listing.channels.channels] == [a]
        assert (await stop(nats_client, small, a)).code == OK
        second = await start(nats_client, small, b, str(clip), **spec)
        assert second.code == OK
        deadline = time.monotonic() + 10
        while not ring_exists(b):
            assert time.monotonic() < deadline, "decoder b wrote no ring"
            await asyncio.sleep(0.05)
    finally:
        assert small.stop() == 0
    assert not pid_alive(second.channel.pid)
    assert not ring_exists(b)
