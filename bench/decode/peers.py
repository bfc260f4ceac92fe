"""Why the decoder uses PyAV with I420 rings: decode-into-ring variants measured side by side.

    python -m bench.decode.peers [--runs 5] [--resolution 1080p]

Every variant decodes the same file from start to end and writes each frame into a shmring slot (except the
decode-only ones, which show the ceiling). Variants run alternately, best run kept (see bench/suites/decode.py
for why). The numbers behind the choice are in services/decoder/README.md.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import av
import cv2

from bench.harness import Row, format_table
from bench.suites.decode import FILES, ffmpeg_fps, raise_priority
from vap_common.paths import sample_video
from vap_decoder.ring_sink import PlaneWriter, yuv420_planes
from vap_proto.v1.frame_pb2 import PixelFormat
from vap_shmring import RingWriter

Variant = Callable[[Path], int]


def _ring(path: Path, pixel_format: PixelFormat.ValueType) -> RingWriter:
    with av.open(str(path)) as c:
        ctx = c.streams.video[0].codec_context
        width, height = ctx.width, ctx.height
    return RingWriter.create(
        f"bench-peers-{uuid.uuid4().hex[:8]}", width=width, height=height, pixel_format=pixel_format, slots=8
    )


def pyav(path: Path, *, threads: int, ring_format: PixelFormat.ValueType | None) -> int:
    ring = _ring(path, ring_format) if ring_format is not None else None
    n = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = threads
            writer = None
            for frame in container.decode(stream):
                if ring is not None:
                    if writer is None:
                        size = (frame.width, frame.height)
                        writer = PlaneWriter(size, size, ring.geometry.pixel_format)
                    planes = yuv420_planes(frame)
                    writer.write(planes, ring.begin())
                    ring.commit(sequence=n)
                n += 1
    finally:
        if ring is not None:
            ring.close()
    return n


def opencv(path: Path, *, into_ring: bool) -> int:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    ring = _ring(path, PixelFormat.PIXEL_FORMAT_BGR24) if into_ring else None
    n = 0
    try:
        while True:
            if ring is None:
                if not cap.grab():  # decode only, no colour conversion
                    break
            else:
                slot = ring.begin()
                ok, _ = cap.read(image=slot.planes[0])  # BGR straight into the slot
                if not ok:
                    ring.abort()
                    break
                ring.commit(sequence=n)
            n += 1
    finally:
        cap.release()
        if ring is not None:
            ring.close()
    return n


VARIANTS: dict[str, Variant] = {
    "pyav decode only (auto threads)": lambda p: pyav(p, threads=0, ring_format=None),
    "pyav -> I420 ring (auto threads)": lambda p: pyav(
        p, threads=0, ring_format=PixelFormat.PIXEL_FORMAT_I420
    ),
    "pyav -> I420 ring (2 threads)": lambda p: pyav(p, threads=2, ring_format=PixelFormat.PIXEL_FORMAT_I420),
    "pyav -> BGR ring (cvtColorTwoPlane)": lambda p: pyav(
        p, threads=0, ring_format=PixelFormat.PIXEL_FORMAT_BGR24
    ),
    # OpenCV's FFmpeg backend has no YUV output: CAP_PROP_CONVERT_RGB=0 on yuv420p yields the Y plane only.
    "opencv grab only": lambda p: opencv(p, into_ring=False),
    "opencv read -> BGR ring": lambda p: opencv(p, into_ring=True),
}


def measure(path: Path, runs: int) -> list[Row]:
    best: dict[str, float] = {}
    for _ in range(runs):
        fps, _frames = ffmpeg_fps(path)
        best["ffmpeg -threads 2 -f null"] = max(best.get("ffmpeg -threads 2 -f null", 0.0), fps)
        for name, variant in VARIANTS.items():
            t0 = time.perf_counter()
            frames = variant(path)
            best[name] = max(best.get(name, 0.0), frames / (time.perf_counter() - t0))
    reference = best["ffmpeg -threads 2 -f null"]
    return [{"variant": k, "fps": round(v, 1), "vs_ffmpeg": round(v / reference, 3)} for k, v in best.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decode.peers", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--resolution", choices=sorted(FILES), default="1080p")
    args = parser.parse_args(argv)
    path = sample_video(FILES[args.resolution])
    nice = raise_priority()
    rows = measure(path, args.runs)
    print(f"{path.name}, best of {args.runs} alternating runs, nice {nice}")
    print(format_table(rows, ["variant", "fps", "vs_ffmpeg"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
