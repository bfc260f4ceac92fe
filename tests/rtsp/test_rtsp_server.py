"""The simulated RTSP camera behaves like a real one, seen from a real FFmpeg client (PyAV in the venv).

Frames are compared as raw decoded YUV420 planes (no colour conversion), so equality means the
client got the file's exact bitstream: frame i of a fresh session must be frame i mod N of the file.
"""

from __future__ import annotations

import functools
import itertools
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np
import numpy.typing as npt
import pytest

from vap_rtspcam.controller import RtspCameraError, unavailable_reason
from vap_rtspcam.fixtures import DEFAULT_FILE, RtspCameraFactory
from vap_stack.sample import slices_per_picture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Frame = npt.NDArray[Any]  # yuv420p planes: uint8
FAST_OPEN = {"analyzeduration": "0", "probesize": "32768"}


@functools.cache
def file_frames(path: Path, count: int) -> list[Frame]:
    """The first `count` frames decoded from the file itself (the reference)."""
    frames: list[Frame] = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray())  # yuv420p planes stacked, shape (h*3/2, w)
            if len(frames) == count:
                break
    return frames


@dataclass
class Received:
    frames: list[Frame]
    pts: list[int | None]  # in the RTP clock (1/90000 s)
    seconds: float  # from open to the last frame


def read_frames(url: str, count: int, transport: str = "tcp", read_timeout: float = 3.0) -> Received:
    """Decode `count` frames from a fresh session."""
    got = Received([], [], 0.0)
    t0 = time.monotonic()
    with av.open(url, options={"rtsp_transport": transport, **FAST_OPEN}, timeout=(5.0, read_timeout)) as c:
        for frame in c.decode(video=0):
            got.frames.append(frame.to_ndarray())
            got.pts.append(frame.pts)
            if len(got.frames) == count:
                break
    got.seconds = time.monotonic() - t0
    assert len(got.frames) == count, f"stream ended after {len(got.frames)} frames"
    return got


def assert_pts_steady(pts: list[int | None]) -> None:
    """One 25 fps frame interval (90000/25 ticks) between all consecutive frames: no jump, no rewind.

    FFmpeg gives the first frame no pts when analyzeduration=0 (it has not synced RTP time yet), so
    the check starts at the second frame.
    """
    rest = pts[1:]
    assert None not in rest, f"frames without pts: {pts}"
    steps = [b - a for a, b in itertools.pairwise(rest) if a is not None and b is not None]
    bad = [(k + 1, step) for k, step in enumerate(steps) if step != 3600]
    assert not bad, f"(frame, pts step) not 3600: {bad[:5]}"


def assert_frames_equal(got: list[Frame], ref: list[Frame], first: int = 0) -> None:
    """got[k] must equal ref[(first + k) % len(ref)]; reports the first mismatching index."""
    for k, frame in enumerate(got):
        expected = ref[(first + k) % len(ref)]
        assert frame.shape == expected.shape, f"frame {k}: shape {frame.shape} != {expected.shape}"
        if not np.array_equal(frame, expected):
            diff = int(np.count_nonzero(frame != expected))
            pytest.fail(f"frame {k} (file frame {(first + k) % len(ref)}) differs in {diff} samples")


def make_short_clip(src: Path, dst: Path, frames: int) -> None:
    """Stream-copy the first `frames` frames (whole GOPs) of src into dst: no re-encode, same bitstream."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        n = 0
        for packet in inp.demux(in_stream):
            if packet.dts is None:  # the demuxer's final flush packet
                continue
            if n == frames:
                break
            packet.stream = out_stream
            out.mux(packet)
            n += 1


def make_sliced_clip(src: Path, dst: Path, frames: int, slices: int) -> None:
    """The first `frames` frames of src re-encoded with `slices` slices per picture, as many cameras send."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 768, 576, "yuv420p"
        stream.options = {
            "bf": "0",
            "g": "25",
            "preset": "veryfast",
            "x264-params": f"sliced-threads=0:slices={slices}",
        }
        for i, frame in enumerate(inp.decode(video=0)):
            if i == frames:
                break
            frame.pts, frame.time_base = i, Fraction(1, 25)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_fresh_session_is_bit_exact_and_real_time(rtsp_camera: RtspCameraFactory, transport: str) -> None:
    cam = rtsp_camera(DEFAULT_FILE)
    got = read_frames(cam.url, 40, transport)
    assert_frames_equal(got.frames, file_frames(DEFAULT_FILE, 40))
    assert_pts_steady(got.pts)
    # Paced at 25 fps: 40 frames span 39 frame intervals = 1.56 s; a server that bursts would be ~0.2 s.
    assert got.seconds > 1.3, f"40 frames in {got.seconds:.2f} s: not paced in real time"


def test_stream_loops_past_end_of_file(rtsp_camera: RtspCameraFactory, tmp_path: Path) -> None:
    clip = tmp_path / "clip-2s.mp4"
    make_short_clip(DEFAULT_FILE, clip, 50)  # 2 GOPs = 2 s
    cam = rtsp_camera(clip)
    assert cam.ready_line is not None and "frames=50 " in cam.ready_line, cam.ready_line
    got = read_frames(cam.url, 70)  # 20 frames into the second loop
    assert_frames_equal(got.frames, file_frames(DEFAULT_FILE, 50))
    assert_pts_steady(got.pts)  # timestamps continue across the loop
    assert got.seconds > 2.4, f"70 frames in {got.seconds:.2f} s: the loop is not paced in real time"


def test_client_reconnects_after_kill_and_restart_on_same_port(rtsp_camera: RtspCameraFactory) -> None:
    cam = rtsp_camera()
    url = cam.url
    with av.open(url, options={"rtsp_transport": "tcp", **FAST_OPEN}, timeout=(5.0, 2.0)) as c:
        frames = c.decode(video=0)
        next(frames)
        cam.kill()  # power loss: the TCP connection is reset, the client must see an error, not hang
        with pytest.raises((av.error.FFmpegError, StopIteration)):
            for _ in range(100):  # frames already buffered in the client may still come out
                next(frames)
    assert not cam.running
    cam.start()
    assert cam.url == url
    assert_frames_equal(read_frames(url, 5).frames, file_frames(DEFAULT_FILE, 5))


def test_sigstop_times_out_a_read_and_sigcont_resumes(rtsp_camera: RtspCameraFactory) -> None:
    cam = rtsp_camera()
    ref = file_frames(DEFAULT_FILE, 60)
    opts = {"rtsp_transport": "tcp", **FAST_OPEN}
    # Two sessions: `impatient` has a 0.5 s read timeout and must give up while the camera hangs;
    # `patient` waits through the hang and must continue its own sequence without a gap after SIGCONT.
    with (
        av.open(cam.url, options=opts, timeout=(5.0, 0.5)) as impatient,
        av.open(cam.url, options=opts, timeout=(5.0, 10.0)) as patient,
    ):
        impatient_frames = impatient.decode(video=0)
        patient_frames = patient.decode(video=0)
        got = [next(patient_frames).to_ndarray() for _ in range(5)]
        next(impatient_frames)

        cam.pause()
        t0 = time.monotonic()
        with pytest.raises(av.error.FFmpegError):
            for _ in range(100):  # drain what the client had buffered, then block until the timeout
                next(impatient_frames)
        waited = time.monotonic() - t0
        assert waited < 3.0, f"read on a hung camera took {waited:.1f} s to time out"
        time.sleep(max(0.0, 1.0 - waited))  # the hang lasts at least 1 s
        cam.resume()

        got += [next(patient_frames).to_ndarray() for _ in range(20)]
        assert_frames_equal(got, ref)


@pytest.mark.parametrize("scheme", ["basic", "digest"])
def test_credentials_required_and_accepted_in_url(rtsp_camera: RtspCameraFactory, scheme: str) -> None:
    cam = rtsp_camera(user="admin", password="s3cr:t@/x", auth=scheme)
    assert "s3cr%3At%40%2Fx" in cam.url  # reserved characters are percent-encoded in the URL
    for url in (cam.url_without_credentials, cam.url.replace("s3cr", "wrong")):
        with pytest.raises(av.error.HTTPUnauthorizedError, match="401"):
            read_frames(url, 1)
    assert_frames_equal(read_frames(cam.url, 3).frames, file_frames(DEFAULT_FILE, 3))


def test_two_cameras_are_independent(rtsp_camera: RtspCameraFactory) -> None:
    first = rtsp_camera(path="cam1")
    second = rtsp_camera(DEFAULT_FILE.with_name("vtest-720p25.mp4"), path="cam2")
    assert first.port != second.port and first.pid != second.pid
    opts = {"rtsp_transport": "tcp", **FAST_OPEN}
    with (
        av.open(first.url, options=opts, timeout=(5.0, 1.0)) as c1,
        av.open(second.url, options=opts, timeout=(5.0, 2.0)) as c2,
    ):
        frames1, frames2 = c1.decode(video=0), c2.decode(video=0)
        assert next(frames1).width == 768
        assert next(frames2).width == 1280
        first.kill()
        with pytest.raises((av.error.FFmpegError, StopIteration)):
            for _ in range(100):
                next(frames1)
        # The survivor keeps streaming, full rate, after its neighbour died.
        t0 = time.monotonic()
        for _ in range(25):
            next(frames2)
        assert time.monotonic() - t0 < 2.0
    assert second.running


def test_transport_restriction_refuses_udp(rtsp_camera: RtspCameraFactory) -> None:
    cam = rtsp_camera(protocols=("tcp",))
    with pytest.raises(av.error.FFmpegError):
        read_frames(cam.url, 1, transport="udp")
    read_frames(cam.url, 1, transport="tcp")


def test_start_errors_are_clear(rtsp_camera: RtspCameraFactory, tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-video.mp4"
    bogus.write_bytes(b"\0" * 1000)
    cam = rtsp_camera(bogus, start=False)
    with pytest.raises(RtspCameraError, match="exited with 2"):
        cam.start()
    assert not cam.running
    # A port someone else holds: an explicit port is not silently replaced.
    taken = rtsp_camera()
    clash = rtsp_camera(port=taken.port, start=False)
    with pytest.raises(RtspCameraError, match="exited with 3"):
        clash.start()


def test_missing_system_packages_are_named() -> None:
    # The venv interpreter has no python3-gi: exactly the situation of an unprepared machine.
    reason = unavailable_reason(sys.executable)
    assert reason is not None and "python3-gi" in reason
    assert "not found" in (unavailable_reason("/nonexistent/python3") or "")


def test_fixture_cleans_up_paused_cameras(rtsp_camera: RtspCameraFactory) -> None:
    cam = rtsp_camera()
    cam.pause()
    pid = cam.pid
    assert pid is not None
    rtsp_camera.close_all()
    assert not cam.running
    assert not Path(f"/proc/{pid}").exists()
    assert repr(cam).endswith("stopped, pid=None)")


def test_stop_is_graceful(rtsp_camera: RtspCameraFactory) -> None:
    cam = rtsp_camera()
    cam.pause()  # stop() must also work on a hung camera (it sends SIGCONT first)
    t0 = time.monotonic()
    cam.stop()
    assert cam.exit_code == 0, cam.output
    assert time.monotonic() - t0 < 2.0


def test_shared_mode_joins_mid_stream_at_a_keyframe(rtsp_camera: RtspCameraFactory) -> None:
    # --shared is a real camera: one pipeline, a second client joins the running stream. It must start
    # at a GOP boundary (GOP 25) and be bit-exact from there, i.e. frame i = file frame (k + i) mod N.
    cam = rtsp_camera(shared=True)
    ref = file_frames(DEFAULT_FILE, 150)
    opts = {"rtsp_transport": "tcp", **FAST_OPEN}
    with av.open(cam.url, options=opts, timeout=(5.0, 2.0)) as first:
        frames = first.decode(video=0)
        for _ in range(15):
            next(frames)
        got = read_frames(cam.url, 5).frames
    k = next((i for i, frame in enumerate(ref) if np.array_equal(frame, got[0])), None)
    assert k is not None and k > 0 and k % 25 == 0, f"second client started at file frame {k}"
    assert_frames_equal(got, ref, first=k)


def test_multi_slice_pictures_arrive_whole_and_once(rtsp_camera: RtspCameraFactory, tmp_path: Path) -> None:
    """A picture cut into several slices reaches the client as one picture, bit-exact, once: the payloader
    once put SPS/PPS in front of every IDR slice, which starts a new access unit, so FFmpeg split each
    keyframe into partial pictures (half black, a repeated pts) and every frame after it decoded wrong."""
    clip = tmp_path / "sliced.mp4"
    make_sliced_clip(DEFAULT_FILE, clip, frames=60, slices=4)
    assert slices_per_picture(clip) == {4}  # the premise: every picture has 4 slices
    got = read_frames(rtsp_camera(clip).url, 55)
    assert_frames_equal(got.frames, file_frames(clip, 60))
    assert_pts_steady(got.pts)
