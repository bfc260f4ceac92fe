"""One decoder process on its own (as the agent starts it): real RTSP server, real NATS, real ring.

What each test proves is in its docstring. Frames are compared as raw Y planes with the file's own frames
decoded by PyAV: equality means the ring holds exactly what the camera sent, in order.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from nats.aio.client import Client as NatsClient

from vap_common.paths import sample_video
from vap_decoder.health import RECONNECTING, STOPPED, STREAMING
from vap_decoder.process import EXIT_OK
from vap_decoder.testing import (
    ChannelProcess,
    FrameWatch,
    HealthWatch,
    corrupt,
    make_clip,
    reference_luma,
    source_spec,
)
from vap_proto.v1.agent_pb2 import StartChannel
from vap_proto.v1.source_pb2 import RtspTransport, SourceSpec
from vap_rtspcam.fixtures import RtspCameraFactory
from vap_shmring import SHM_DIR, ring_name

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

USER, PASSWORD = "operator", "pa:ss@w0rd!"
VIDEO_576 = sample_video("vtest-576p25.mp4")


@contextmanager
def decoder(
    channel_id: str, spec: SourceSpec, nats_url: str, tmp_path: Path, **settings: object
) -> Iterator[ChannelProcess]:
    proc = ChannelProcess(
        StartChannel(channel_id=channel_id, source=spec),
        nats_url,
        tmp_path / f"{channel_id}.log",
        health_interval_s=0.3,
        **settings,
    )
    try:
        yield proc
    finally:
        proc.close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request on stderr otherwise


def ring_exists(channel_id: str) -> bool:
    return Path(SHM_DIR, ring_name(channel_id)).exists()


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_rtsp_frames_arrive_in_order_with_the_files_content(
    transport: str,
    rtsp_camera: RtspCameraFactory,
    nats_client: NatsClient,
    nats_url: str,
    channel_id: str,
    tmp_path: Path,
) -> None:
    """RTSP with credentials over TCP and UDP: every kept frame is in the ring bit-exact and in order
    (frame i of the session = frame i of the file), its FrameRef has consecutive sequence numbers and rising
    timestamps, health says STREAMING with the source's facts; SIGTERM ends the process with status 0,
    removes the ring, and no log line holds the password."""
    cam = rtsp_camera(VIDEO_576, user=USER, password=PASSWORD)
    count = 30
    expected = reference_luma(VIDEO_576, count)
    mode = RtspTransport.RTSP_TRANSPORT_UDP if transport == "udp" else RtspTransport.RTSP_TRANSPORT_TCP
    spec = source_spec(cam.url, rtsp_transport=mode, ring_slots=16, open_timeout=5, read_timeout=3)
    async with (
        FrameWatch(nats_client, channel_id, read_pixels=True) as frames,
        HealthWatch(nats_client, channel_id) as health,
    ):
        with decoder(channel_id, spec, nats_url, tmp_path) as proc:
            await frames.wait_count(count, timeout=20)
            streaming = await health.wait_state(STREAMING, timeout=5)
            assert ring_exists(channel_id)
            proc.proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == EXIT_OK
            await health.wait_state(STOPPED, timeout=5)
            log = proc.log_text()
    got = frames.frames[:count]
    assert [f.ref.sequence for f in got] == list(range(count))
    assert all(f.ref.stream_epoch == 0 for f in got)
    pts = [f.ref.pts_us for f in got]
    assert np.all(np.diff(pts) > 0)
    assert not any(f.stale for f in got)
    for i, f in enumerate(got):
        assert f.y is not None and np.array_equal(f.y, expected[i]), f"frame {i} differs from the file"
    assert (streaming.width, streaming.height, streaming.codec) == (768, 576, "h264")
    assert streaming.pid == proc.proc.pid
    assert not ring_exists(channel_id)
    assert PASSWORD not in log and "pa%3Ass" not in log
    assert "***@127.0.0.1" in log  # the URL is logged, redacted
    assert all("pa%3Ass" not in h.reason for h in health.reports)


async def test_file_sampling_and_realtime_pacing(
    clip: Path, nats_client: NatsClient, nats_url: str, channel_id: str, tmp_path: Path
) -> None:
    """A 2 s clip paced in real time and sampled to 5 fps: ~10 evenly spaced frames over ~2 s, the other 40
    decoded but skipped (counted, never written), then STOPPED with 'end of file' and exit status 0."""
    spec = source_spec(str(clip), realtime=True, target_fps=5.0)
    async with FrameWatch(nats_client, channel_id) as frames, HealthWatch(nats_client, channel_id) as health:
        t0 = time.monotonic()
        with decoder(channel_id, spec, nats_url, tmp_path) as proc:
            final = await health.wait_state(STOPPED, timeout=20)
            elapsed = time.monotonic() - t0
            assert proc.wait(5) == EXIT_OK
    assert final.reason == "end of file"
    assert (final.frames_decoded, final.frames_total, final.frames_skipped) == (50, 10, 40)
    assert len(frames.frames) == 10
    gaps = np.diff([f.ref.pts_us for f in frames.frames])
    assert np.all(gaps == 200_000)  # every 5th frame of a 25 fps file
    assert elapsed >= 1.7  # 10 frames 0.2 s apart: paced, not decoded as fast as possible


async def test_file_loop_starts_a_new_stream_epoch_each_time(
    clip: Path, nats_client: NatsClient, nats_url: str, channel_id: str, tmp_path: Path
) -> None:
    """A looped file restarts at its first frame with a new stream epoch; sequence numbers keep counting."""
    spec = source_spec(str(clip), loop=True, target_fps=10.0)
    async with FrameWatch(nats_client, channel_id) as frames:
        with decoder(channel_id, spec, nats_url, tmp_path) as proc:
            await frames.wait_count(1, timeout=20, where=lambda ref: ref.stream_epoch >= 2)
            proc.proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == EXIT_OK
    refs = [f.ref for f in frames.frames]
    assert [r.sequence for r in refs] == list(range(len(refs)))
    per_epoch = [[r.pts_us for r in refs if r.stream_epoch == e] for e in (0, 1)]
    assert per_epoch[0] == per_epoch[1]  # the same frames again
    assert len(per_epoch[0]) == 20  # 2 s at 10 fps


async def test_corrupted_data_is_counted_and_decoding_carries_on(
    clip: Path, nats_client: NatsClient, nats_url: str, channel_id: str, tmp_path: Path
) -> None:
    """Damaged coded frames are counted as decode errors and logged; the channel keeps decoding to the end."""
    damaged = corrupt(clip, tmp_path / "damaged.mp4", bursts=12)
    async with HealthWatch(nats_client, channel_id) as health:
        with decoder(channel_id, source_spec(str(damaged)), nats_url, tmp_path) as proc:
            final = await health.wait_state(STOPPED, timeout=20)
            assert proc.wait(5) == EXIT_OK
            log = proc.log_text()
    assert final.reason == "end of file"
    assert final.decode_errors > 0
    assert final.frames_total >= 40  # concealed frames are still delivered
    assert "corrupt" in log


async def test_http_source_streams(
    clip: Path, nats_client: NatsClient, nats_url: str, channel_id: str, tmp_path: Path
) -> None:
    """An HTTP(S) source is opened through FFmpeg's http protocol and decoded like any other; at its end
    (a live stream that ended) the channel reconnects. Served as MPEG-TS, like HTTP live streams are: an mp4
    needs range requests to reach its index, which this test server does not do."""
    ts = make_clip(clip, tmp_path / "clip.ts", 50)
    handler = partial(_QuietHandler, directory=str(ts.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{ts.name}"
    try:
        async with (
            FrameWatch(nats_client, channel_id) as frames,
            HealthWatch(nats_client, channel_id) as health,
        ):
            with decoder(channel_id, source_spec(url, backoff_max=0.5), nats_url, tmp_path):
                await frames.wait_count(50, timeout=20)
                await health.wait_state(STREAMING, timeout=5)
                ended = await health.wait_state(RECONNECTING, timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert "stream ended" in ended.reason


async def test_sigterm_ends_a_process_blocked_on_a_hung_camera(
    rtsp_camera: RtspCameraFactory, nats_client: NatsClient, nats_url: str, channel_id: str, tmp_path: Path
) -> None:
    """SIGTERM while the loop is blocked inside FFmpeg (camera hung, long read timeout): the process still
    reports STOPPED and exits within about a second."""
    cam = rtsp_camera()
    spec = source_spec(cam.url, read_timeout=30, stall_timeout=30)
    async with HealthWatch(nats_client, channel_id) as health:
        with decoder(channel_id, spec, nats_url, tmp_path) as proc:
            await health.wait_state(STREAMING, timeout=10)
            cam.pause()
            try:
                time.sleep(0.5)  # the loop is now waiting for data that does not come
                t0 = time.monotonic()
                proc.proc.send_signal(signal.SIGTERM)
                assert proc.wait(10) == EXIT_OK
                assert time.monotonic() - t0 < 3.0
            finally:
                cam.resume()
            stopped = await health.wait_state(STOPPED, timeout=5)
    assert stopped.reason == "stopped on request"
