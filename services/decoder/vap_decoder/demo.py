"""The main job for now: a real camera stream through the frame bus, with embedded NATS and PostgreSQL.

    python -m vap_decoder.demo [--seconds 20] [--video PATH]

1. starts embedded NATS and PostgreSQL (or uses NATS_URL / DATABASE_URL);
2. serves the sample video as a live RTSP camera (GStreamer, when its Debian packages are installed;
   otherwise the file is read paced in real time);
3. decodes it with FFmpeg (PyAV) straight into a shmring (I420) and publishes a FrameRef per frame on NATS
   (vap_framebus, the hot-path client);
4. a reader process subscribes, maps the ring, looks at every frame through a zero-copy numpy view
   (mean luma of a subsampled Y plane) and measures the handoff latency commit -> view;
5. per-second figures go to PostgreSQL and are printed; the summary at the end is read back from there.

It grows into ``vap up`` (decoder agent, inference, tracker, control) as the services land.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path

import av
import numpy as np
import psycopg

from vap_common import aio, subjects
from vap_common.embedded import EmbeddedServers
from vap_common.paths import REPO_ROOT, sample_video
from vap_common.redact import redact_url
from vap_decoder.ring_sink import copy_i420
from vap_framebus import AsyncFrameSubscriber, FramePublisher
from vap_proto.v1.frame_pb2 import FrameRef, PixelFormat
from vap_rtspcam import RtspCamera, unavailable_reason
from vap_shmring import ReaderPool, RingWriter, ShmRingError

CHANNEL = "demo-cam-1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS demo_frame_stats (
    run_id      bigint      NOT NULL,
    channel_id  text        NOT NULL,
    second      integer     NOT NULL,
    frames      integer     NOT NULL,
    stale       integer     NOT NULL,
    p50_ms      double precision,
    p99_ms      double precision,
    mean_luma   double precision,
    PRIMARY KEY (run_id, channel_id, second)
)"""


@dataclass(frozen=True)
class ReaderConfig:
    nats_url: str
    database_url: str
    run_id: int


def _reader_main(config: ReaderConfig, ready: Event, stop: Event) -> None:
    aio.run(_read_frames(config, ready, stop))


async def _read_frames(config: ReaderConfig, ready: Event, stop: Event) -> None:
    pool = ReaderPool()
    latencies: list[float] = []
    lumas: list[float] = []
    stale = 0
    second = 0

    def on_frame(_subject: str, payload: bytes) -> None:
        # Called inline by the frame bus: view, look, check, no awaits.
        nonlocal stale
        ref = FrameRef.FromString(payload)
        try:
            y_plane = pool.view(ref).planes[0]
            latencies.append((time.time_ns() - ref.commit_time_ns) / 1e6)
            luma = float(y_plane[::8, ::8].mean())
            pool.check(ref)  # after the last use of the pixels
        except ShmRingError:  # a rewritten slot or a restarted ring: count it, the next frame will do
            stale += 1
            return
        lumas.append(luma)

    bus = AsyncFrameSubscriber()
    await bus.connect(config.nats_url, name="vap-demo-reader")
    await bus.subscribe(subjects.frames(CHANNEL), on_frame)
    with psycopg.connect(config.database_url, autocommit=True) as db:
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(1.0)
            second += 1
            lat = np.asarray(latencies) if latencies else None
            row = (
                config.run_id,
                CHANNEL,
                second,
                len(latencies),
                stale,
                float(np.percentile(lat, 50)) if lat is not None else None,
                float(np.percentile(lat, 99)) if lat is not None else None,
                float(np.mean(lumas)) if lumas else None,
            )
            db.execute("INSERT INTO demo_frame_stats VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", row)
            p50 = f"{row[5]:.3f}" if row[5] is not None else "-"
            p99 = f"{row[6]:.3f}" if row[6] is not None else "-"
            print(
                f"  t={second:>3}s  frames/s {len(latencies):>3}  handoff p50 {p50} ms  p99 {p99} ms",
                flush=True,
            )
            latencies.clear()
            lumas.clear()
            stale = 0
    await bus.close()
    pool.close()


def _open_source(video: Path) -> tuple[str, dict[str, str], RtspCamera | None]:
    reason = unavailable_reason()
    if reason is None:
        camera = RtspCamera(video).start()
        options = {"rtsp_transport": "tcp", "analyzeduration": "0", "probesize": "32768"}
        return camera.url, options, camera
    print(f"RTSP camera unavailable ({reason}); reading the file in real time instead")
    return str(video), {}, None


def _decode(url: str, options: dict[str, str], nats_url: str, seconds: float, paced: bool) -> int:
    bus = FramePublisher()
    bus.connect(nats_url, name="vap-demo-decoder")
    container = av.open(url, options=options, timeout=(10.0, 5.0))
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    ctx = stream.codec_context
    ring = RingWriter.create(
        CHANNEL, width=ctx.width, height=ctx.height, pixel_format=PixelFormat.PIXEL_FORMAT_I420, slots=8
    )
    print(f"decoding {redact_url(url)}: {ctx.width}x{ctx.height} {ctx.name} -> ring {ring.name}")
    started = time.monotonic()
    frame_period = 1.0 / float(stream.average_rate or 25)
    sequence = 0
    try:
        for frame in container.decode(stream):
            captured = time.time_ns()
            copy_i420(frame, ring.begin())
            ref = ring.commit(sequence=sequence, capture_time_ns=captured)
            bus.publish(subjects.frames(CHANNEL), ref.SerializeToString())
            sequence += 1
            elapsed = time.monotonic() - started
            if elapsed >= seconds:
                break
            # A file has no clock of its own: pace it like a live camera. RTSP arrives in real time.
            if paced:
                time.sleep(max(0.0, sequence * frame_period - elapsed))
    finally:
        container.close()
        bus.flush()
        bus.close()
        ring.close()
    return sequence


def _summary(database_url: str, run_id: int) -> None:
    with psycopg.connect(database_url) as db:
        row = db.execute(
            "SELECT count(*), sum(frames), sum(stale), percentile_cont(0.5) WITHIN GROUP (ORDER BY p50_ms),"
            " max(p99_ms), avg(mean_luma) FROM demo_frame_stats WHERE run_id = %s AND frames > 0",
            (run_id,),
        ).fetchone()
    assert row is not None
    seconds, frames, stale, p50, p99, luma = row
    fps = (frames or 0) / max(seconds, 1)
    print(
        f"summary from PostgreSQL: {frames or 0} frames over {seconds} s ({fps:.1f} fps), {stale or 0} stale,"
        f" handoff p50 {p50 or 0:.3f} ms (median of per-second medians),"
        f" worst per-second p99 {p99 or 0:.3f} ms, mean luma {luma or 0:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vap_decoder.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to stream (default 20)")
    parser.add_argument("--video", type=Path, default=sample_video("vtest-720p25.mp4"), help="video file")
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / ".vap" / "demo", help="embedded servers")
    args = parser.parse_args(argv)
    if not args.video.is_file():
        print(
            f"error: video {args.video} not found (set VAP_SAMPLE_DATA_DIR or pass --video)", file=sys.stderr
        )
        return 2

    run_id = time.time_ns()
    with EmbeddedServers() as servers:
        endpoints = servers.start(args.data_dir, durable=False)
        assert endpoints.nats_url is not None and endpoints.database_url is not None
        with psycopg.connect(endpoints.database_url, autocommit=True) as db:
            db.execute(_SCHEMA)
        url, options, camera = _open_source(args.video)
        ctx = mp.get_context("spawn")
        ready, stop = ctx.Event(), ctx.Event()
        reader = ctx.Process(
            target=_reader_main,
            args=(ReaderConfig(endpoints.nats_url, endpoints.database_url, run_id), ready, stop),
        )
        reader.start()
        try:
            if not ready.wait(30):
                print("error: the reader process did not start", file=sys.stderr)
                return 1
            frames = _decode(url, options, endpoints.nats_url, args.seconds, camera is None)
            time.sleep(1.2)  # let the reader account for the last second
            print(f"decoded and published {frames} frames")
        finally:
            stop.set()
            reader.join(10)
            if reader.is_alive():
                reader.kill()
            if camera is not None:
                camera.close()
        _summary(endpoints.database_url, run_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
