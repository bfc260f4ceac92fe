"""The sample video on a fresh machine: OpenCV's ``vtest.avi`` (Debian package opencv-doc) as H.264 mp4.

The checked-in data set (../shared/data, see its README) was made from the same file; without it, `vap up`
fetches the package with ``apt-get download`` (no root needed), unpacks it with ``dpkg -x`` and transcodes
the clip with PyAV into ``.vap/data`` (``vap_common.paths.sample_data_dir()``'s fallback), scaled to the
height in the requested name (``vtest-720p25.mp4`` -> 720 lines, 25 fps). Only names of that form can be
made; anything else is a file the user has to provide.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

PACKAGE = "opencv-doc"
MEMBER = "usr/share/doc/opencv-doc/examples/data/vtest.avi"
INSTALLED = Path("/") / MEMBER
_NAME_RE = re.compile(r"^vtest-(\d{3,4})p(\d{2})\.mp4$")


class SampleError(RuntimeError):
    pass


def _source_avi(work: Path, report: Callable[[str], None]) -> Path:
    if INSTALLED.is_file():
        return INSTALLED
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise SampleError(f"no {INSTALLED} and no apt-get/dpkg to fetch {PACKAGE}")
    report(f"downloading the Debian package {PACKAGE} for its sample video (vtest.avi)")
    got = subprocess.run(
        ["apt-get", "download", PACKAGE], cwd=work, capture_output=True, text=True, check=False
    )
    debs = sorted(work.glob(f"{PACKAGE}_*.deb"))
    if got.returncode != 0 or not debs:
        raise SampleError(f"`apt-get download {PACKAGE}` failed: {got.stderr.strip()[-500:]}")
    subprocess.run(["dpkg", "-x", str(debs[0]), str(work / "root")], check=True)
    avi = work / "root" / MEMBER
    if not avi.is_file():
        raise SampleError(f"{debs[0].name} holds no {MEMBER}")
    return avi


def transcode(src: Path, dest: Path, height: int, fps: int) -> None:
    """H.264 (yuv420p, no B-frames, a keyframe every second: quick RTSP joins) scaled to ``height``."""
    import av

    tmp = dest.with_suffix(".part.mp4")
    with av.open(str(src)) as inp, av.open(str(tmp), "w") as out:
        vin = inp.streams.video[0]
        width = round(vin.codec_context.width * height / vin.codec_context.height / 2) * 2
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"bf": "0", "g": str(fps), "preset": "veryfast", "crf": "23"}
        stream.codec_context.time_base = Fraction(1, fps)
        for i, frame in enumerate(inp.decode(vin)):
            scaled = frame.reformat(width=width, height=height, format="yuv420p")
            scaled.pts, scaled.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(scaled))
        out.mux(stream.encode(None))
    tmp.replace(dest)


def ensure_sample_video(path: Path, report: Callable[[str], None]) -> Path:
    """``path`` when it exists; else, for a ``vtest-<H>p<FPS>.mp4`` name, made from OpenCV's vtest.avi."""
    if path.is_file():
        return path
    match = _NAME_RE.match(path.name)
    if match is None:
        raise SampleError(f"video {path} does not exist (set VAP_SAMPLE_DATA_DIR or give a path)")
    height, fps = int(match.group(1)), int(match.group(2))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vap-sample-") as work:
        avi = _source_avi(Path(work), report)
        report(f"making {path} from {avi.name} ({height}p, {fps} fps)")
        transcode(avi, path, height, fps)
    return path
