"""Unit tests of the decoder's pieces: sampling, backoff, source planning, health states, ring writing.

No servers: real FFmpeg frames (decoded from the sample video) and real rings in /dev/shm.
"""

from __future__ import annotations

import functools
import random
import uuid
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest

from vap_common.backoff import Backoff
from vap_common.paths import sample_video
from vap_decoder.errors import InvalidSourceError, PermanentSourceError
from vap_decoder.health import CONNECTING, FAILED, RECONNECTING, STOPPED, STREAMING, HealthTracker
from vap_decoder.ring_sink import RingSink, output_size
from vap_decoder.sampler import FrameSampler
from vap_decoder.settings import DecoderSettings
from vap_decoder.source import SourceKind, plan_source
from vap_decoder.testing import source_spec
from vap_proto.v1.frame_pb2 import FrameRef, PixelFormat
from vap_proto.v1.source_pb2 import RtspTransport
from vap_shmring import RingReader

VIDEO = sample_video("vtest-576p25.mp4")
SETTINGS = DecoderSettings(agent_id="unit", nats_url=None)


# --- sampling ----------------------------------------------------------------------------------------------


def _kept(target: float | None, source_fps: float, seconds: float, start: float = 0.0) -> list[float]:
    sampler = FrameSampler(target)
    times = [start + i / source_fps for i in range(int(seconds * source_fps))]
    return [t for t in times if sampler.keep(t)]


def test_sampler_keeps_every_frame_without_a_target() -> None:
    assert len(_kept(None, 25, 4)) == 100


@pytest.mark.parametrize(("target", "expected_per_10s"), [(10, 100), (5, 50), (1, 10), (12.5, 125), (7, 70)])
def test_sampler_keeps_the_target_rate_on_average(target: float, expected_per_10s: int) -> None:
    kept = _kept(target, 25, 10, start=123.456)
    assert abs(len(kept) - expected_per_10s) <= 1
    gaps = np.diff(kept)
    # Evenly spaced: no gap longer than one period plus one source frame.
    assert gaps.max() <= 1 / target + 1 / 25 + 1e-9


def test_sampler_restarts_its_schedule_after_a_timestamp_jump() -> None:
    sampler = FrameSampler(5)
    assert sampler.keep(100.0)
    assert not sampler.keep(100.04)
    assert sampler.keep(0.0)  # a looped file / new stream: first frame kept at once
    assert not sampler.keep(0.04)
    assert sampler.keep(500.0)  # a gap (outage)


# --- backoff -----------------------------------------------------------------------------------------------


def test_backoff_first_retry_within_a_second_then_exponential_up_to_the_cap() -> None:
    backoff = Backoff(0.5, 30.0, rng=random.Random(3))
    delays = [backoff.next_delay() for _ in range(12)]
    assert 0.25 <= delays[0] <= 0.5
    ceilings = [min(30.0, 0.5 * 2**n) for n in range(12)]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling  # jitter within [d/2, d]
    assert max(delays) <= 30.0
    assert delays[-1] >= 15.0
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_backoff_cap_below_initial_is_respected() -> None:
    backoff = Backoff(0.5, 0.2)
    assert all(backoff.next_delay() <= 0.2 for _ in range(5))


# --- source planning ---------------------------------------------------------------------------------------


def test_rtsp_plan_uses_the_transport_fast_open_and_timeouts_and_hides_credentials() -> None:
    url = "rtsp://admin:p%40ss@cam.local:554/stream1"
    plan = plan_source(
        source_spec(url, rtsp_transport=RtspTransport.RTSP_TRANSPORT_UDP, open_timeout=2, read_timeout=1.5),
        SETTINGS,
    )
    assert plan.kind is SourceKind.RTSP and plan.live
    assert plan.url == url  # FFmpeg needs the credentials...
    assert plan.redacted_url == "rtsp://***@cam.local:554/stream1"  # ...nothing else sees them
    assert "p%40ss" not in repr(plan)
    assert plan.options["rtsp_transport"] == "udp"
    assert plan.options["analyzeduration"] == "0"
    assert plan.options["timeout"] == "1500000"
    assert (plan.open_timeout_s, plan.read_timeout_s) == (2.0, 1.5)
    assert plan.thread_type == SETTINGS.live_thread_type


def test_rtsp_defaults_to_tcp_and_rtsps_is_always_tcp() -> None:
    assert plan_source(source_spec("rtsp://cam/x"), SETTINGS).options["rtsp_transport"] == "tcp"
    udp = source_spec("rtsps://cam/x", rtsp_transport=RtspTransport.RTSP_TRANSPORT_UDP)
    assert plan_source(udp, SETTINGS).options["rtsp_transport"] == "tcp"
    plan = plan_source(source_spec("rtsp://cam/x"), SETTINGS)
    assert (plan.open_timeout_s, plan.read_timeout_s) == (SETTINGS.open_timeout_s, SETTINGS.read_timeout_s)


def test_http_file_and_webcam_plans() -> None:
    http = plan_source(source_spec("https://user:pw@host/live.m3u8"), SETTINGS)
    assert http.kind is SourceKind.HTTP and http.live and http.redacted_url == "https://***@host/live.m3u8"
    for url in (str(VIDEO), f"file://{VIDEO}"):
        plan = plan_source(source_spec(url, realtime=True, loop=True), SETTINGS)
        assert plan.kind is SourceKind.FILE and not plan.live
        assert plan.url == str(VIDEO) and plan.realtime and plan.loop
    unpaced = plan_source(source_spec(str(VIDEO)), SETTINGS)
    assert unpaced.thread_type == SETTINGS.file_thread_type  # throughput, not latency
    cam = plan_source(source_spec("0"), SETTINGS)
    assert (cam.kind, cam.url, cam.format) == (SourceKind.WEBCAM, "/dev/video0", "v4l2")
    dev = plan_source(source_spec("/dev/video2"), SETTINGS)
    assert (dev.kind, dev.url, dev.format) == (SourceKind.WEBCAM, "/dev/video2", "v4l2")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("ftp://user:secret@host/x.mp4", "unsupported source scheme 'ftp'"),
        ("udp://239.0.0.1:1234", "unsupported source scheme 'udp'"),
        ("rtsp:///nohost", "has no host"),
        ("rtsp://host:notaport/x", "malformed"),
        ("file://otherhost/x.mp4", "local file"),
    ],
)
def test_invalid_specs_are_refused_with_a_reason_and_no_credentials(url: str, message: str) -> None:
    with pytest.raises(InvalidSourceError, match=message) as info:
        plan_source(source_spec(url), SETTINGS)
    assert "secret" not in info.value.reason


def test_missing_file_is_a_permanent_error(tmp_path: Path) -> None:
    with pytest.raises(PermanentSourceError, match="file not found"):
        plan_source(source_spec(str(tmp_path / "nope.mp4")), SETTINGS)
    with pytest.raises(PermanentSourceError, match="not a regular file"):
        plan_source(source_spec(str(tmp_path)), SETTINGS)


# --- health state machine ----------------------------------------------------------------------------------


def test_health_transitions_and_redacted_reasons() -> None:
    tracker = HealthTracker("cam-1", agent_id="a", pid=42)
    assert tracker.set_state(CONNECTING, "opening rtsp://***@cam/x")
    assert not tracker.set_state(CONNECTING, "opening rtsp://***@cam/x")  # no change, no report
    assert tracker.set_state(STREAMING)
    assert tracker.set_state(RECONNECTING, "read failed: Connection reset: rtsp://admin:hunter2@cam/x")
    assert "hunter2" not in tracker.reason and "***@cam" in tracker.reason
    assert tracker.set_state(RECONNECTING, "next attempt failed")  # reason changes are reported
    assert tracker.set_state(STREAMING)
    assert tracker.set_state(FAILED, "gave up")
    with pytest.raises(ValueError, match="illegal"):
        tracker.set_state(STREAMING)
    snapshot = tracker.snapshot()
    assert (snapshot.channel_id, snapshot.agent_id, snapshot.pid, snapshot.state) == (
        "cam-1",
        "a",
        42,
        FAILED,
    )
    fresh = HealthTracker("cam-2")
    with pytest.raises(ValueError, match="illegal"):
        fresh.set_state(STREAMING)  # never streams before connecting
    assert fresh.set_state(STOPPED)


def test_health_rates_come_from_the_counters() -> None:
    tracker = HealthTracker("cam-1")
    tracker.update_rates(now=10.0)
    tracker.frames_decoded, tracker.frames_published, tracker.frames_skipped = 100, 40, 60
    tracker.decode_time_s, tracker.write_time_s = 0.2, 0.02
    tracker.update_rates(now=12.0)
    health = tracker.snapshot()
    assert health.decode_fps == pytest.approx(50.0)
    assert health.fps == pytest.approx(20.0)
    assert health.decode_ms == pytest.approx(2.0)
    assert health.write_ms == pytest.approx(0.5)
    assert (health.frames_decoded, health.frames_total, health.frames_skipped) == (100, 40, 60)
    assert health.frames_dropped == 60


# --- writing frames into the ring --------------------------------------------------------------------------


@functools.cache
def _frames(count: int = 3) -> list[av.VideoFrame]:
    with av.open(str(VIDEO)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame)
            if len(frames) == count:
                return frames
    raise AssertionError("video too short")


def _yuv(frame: av.VideoFrame) -> tuple[npt.NDArray[np.uint8], ...]:
    planes = frame.to_ndarray()  # (h*3/2, w) yuv420p, tight
    h, w = frame.height, frame.width
    u = planes[h : h + h // 4].reshape(h // 2, w // 2)
    v = planes[h + h // 4 :].reshape(h // 2, w // 2)
    return planes[:h], u, v


def _write(
    pixel_format: PixelFormat.ValueType, resize: tuple[int, int] | None = None
) -> tuple[RingSink, RingReader, FrameRef]:
    sink = RingSink(f"unit-{uuid.uuid4().hex[:8]}", pixel_format=pixel_format, resize=resize, slots=4)
    ref = sink.write(_frames()[0], sequence=7, pts_us=40_000, capture_time_ns=123, stream_epoch=2)
    assert sink.ring is not None
    reader = RingReader.attach(sink.ring.name)
    return sink, reader, ref


def test_i420_ring_holds_ffmpegs_planes_bit_exact() -> None:
    sink, reader, ref = _write(PixelFormat.PIXEL_FORMAT_I420)
    try:
        view = reader.view(ref)
        for got, want in zip(view.planes, _yuv(_frames()[0]), strict=True):
            assert np.array_equal(got, want)
        assert (ref.width, ref.height, ref.sequence, ref.pts_us, ref.stream_epoch) == (768, 576, 7, 40_000, 2)
        assert ref.source_width == 0  # not resized
    finally:
        reader.close()
        sink.close()


def test_gray_nv12_and_rgb_rings_are_written_in_place() -> None:
    y, u, v = _yuv(_frames()[0])
    tight = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(-1, y.shape[1])
    expected = {
        PixelFormat.PIXEL_FORMAT_GRAY8: [y],
        PixelFormat.PIXEL_FORMAT_NV12: [y, np.stack([u, v], axis=-1)],
        PixelFormat.PIXEL_FORMAT_BGR24: [cv2.cvtColor(tight, cv2.COLOR_YUV2BGR_I420)],
        PixelFormat.PIXEL_FORMAT_RGB24: [cv2.cvtColor(tight, cv2.COLOR_YUV2RGB_I420)],
    }
    for pixel_format, planes in expected.items():
        sink, reader, ref = _write(pixel_format)
        try:
            view = reader.view(ref)
            for got, want in zip(view.planes, planes, strict=True):
                assert np.array_equal(got, want), PixelFormat.Name(pixel_format)
        finally:
            reader.close()
            sink.close()


def test_resize_writes_resized_planes_and_keeps_the_source_size_in_the_ref() -> None:
    sink, reader, ref = _write(PixelFormat.PIXEL_FORMAT_I420, resize=(384, 0))
    try:
        assert (ref.width, ref.height, ref.source_width, ref.source_height) == (384, 288, 768, 576)
        y, u, _ = _yuv(_frames()[0])
        view = reader.view(ref)
        assert np.array_equal(view.planes[0], cv2.resize(y, (384, 288), interpolation=cv2.INTER_AREA))
        assert np.array_equal(view.planes[1], cv2.resize(u, (192, 144), interpolation=cv2.INTER_AREA))
    finally:
        reader.close()
        sink.close()
    sink, reader, ref = _write(PixelFormat.PIXEL_FORMAT_BGR24, resize=(320, 180))
    try:
        assert reader.view(ref).planes[0].shape == (180, 320, 3)
    finally:
        reader.close()
        sink.close()


def test_output_size_keeps_aspect_and_even_sizes_for_420() -> None:
    i420, gray = PixelFormat.PIXEL_FORMAT_I420, PixelFormat.PIXEL_FORMAT_GRAY8
    assert output_size(1920, 1080, None, i420) == (1920, 1080)
    assert output_size(1920, 1080, (0, 0), i420) == (1920, 1080)
    assert output_size(1920, 1080, (640, 0), i420) == (640, 360)
    assert output_size(1920, 1080, (0, 415), i420) == (738, 414)  # 737.8 rounds to 738; 415 is odd -> 414
    assert output_size(1920, 1080, (0, 415), gray) == (738, 415)
    assert output_size(641, 481, None, i420) == (640, 480)


def test_ring_is_recreated_when_the_source_size_changes() -> None:
    sink = RingSink(f"unit-{uuid.uuid4().hex[:8]}", slots=2)
    try:
        sink.write(_frames()[0], sequence=0, pts_us=0, capture_time_ns=0, stream_epoch=0)
        small = _frames()[1].reformat(width=320, height=240)
        ref = sink.write(small, sequence=1, pts_us=0, capture_time_ns=0, stream_epoch=1)
        assert (ref.width, ref.height) == (320, 240)
        assert sink.rings_created == 2
    finally:
        sink.close()


def test_a_decoder_started_by_an_agent_that_is_gone_exits_before_decoding() -> None:
    """The agent passes its pid; a decoder that finds itself reparented once its death signal is armed (the
    agent was killed while the decoder's interpreter started) exits at once: otherwise it would run
    unsupervised and hold the channel's ring against the restarted agent's decoder."""
    import os
    import subprocess

    from vap_decoder.process import EXIT_CRASH, channel_argv
    from vap_proto.v1.agent_pb2 import StartChannel
    from vap_shmring.naming import SHM_DIR, ring_name

    argv = channel_argv(0)
    assert argv[argv.index("--agent-pid") + 1] == str(os.getpid())
    channel = f"orphan-{uuid.uuid4().hex[:8]}"
    start = StartChannel(channel_id=channel, source=source_spec(str(sample_video("vtest-576p25.mp4"))))
    not_our_parent = 1  # init: this test (the real parent) is not it
    done = subprocess.run(
        [*argv[:-1], str(not_our_parent)],
        input=start.SerializeToString(),
        capture_output=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "NATS_URL"},
    )
    assert done.returncode == EXIT_CRASH, done.stderr.decode()[-2000:]
    assert not (Path(SHM_DIR) / ring_name(channel)).exists()
