"""The sample videos on a fresh machine: OpenCV's ``vtest.avi`` (Debian package opencv-doc) as H.264 mp4.

The data set in ../shared/data (see its README) was made from the same file with Debian's ffmpeg; without it,
`vap up` and the test suite fetch the package with ``apt-get download`` (no root needed), unpack it with
``dpkg -x`` and encode the clip the same way into ``sample_data_dir()`` (a per-user cache by default).
Names of the form ``vtest-<H>p<FPS>[-<S>s].mp4`` can be made: 576 lines keep the source's 768x576, other
heights are 16:9 (``vtest-720p25.mp4`` -> 1280x720), ``-10s`` keeps the first 10 seconds. Anything else is a
file the user has to provide.

The encoding matters to every consumer: one slice per picture, no B-frames, a keyframe every second. PyAV's
libx264 defaults to sliced threads (several slices per picture), which some RTSP paths split into separate
pictures; the ffmpeg command pins what ../shared/data used, and the PyAV fallback turns sliced threads off.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

PACKAGE = "opencv-doc"
MEMBER = "usr/share/doc/opencv-doc/examples/data/vtest.avi"
INSTALLED = Path("/") / MEMBER
_NAME_RE = re.compile(r"^vtest-(\d{3,4})p(\d{2})(?:-(\d{1,4})s)?\.mp4$")
# The data set's files (../shared/data): every one the tests and the demo site name.
STANDARD_NAMES = ("vtest-576p25.mp4", "vtest-720p25.mp4", "vtest-1080p25-10s.mp4")
SOURCE_HEIGHT, SOURCE_WIDTH = 576, 768
_DATASET_KBIT_S = {576: 1500, 720: 2500, 1080: 4000}


class SampleError(RuntimeError):
    pass


@dataclass(frozen=True)
class SampleEncoding:
    width: int
    height: int
    fps: int
    seconds: int | None  # None = the whole clip
    kbit_s: int

    @classmethod
    def from_name(cls, name: str) -> SampleEncoding | None:
        match = _NAME_RE.match(name)
        if match is None:
            return None
        height, fps = int(match.group(1)), int(match.group(2))
        seconds = int(match.group(3)) if match.group(3) else None
        width = SOURCE_WIDTH if height == SOURCE_HEIGHT else round(height * 16 / 9 / 2) * 2
        # The data set's rates; other sizes get 720p's rate per pixel.
        kbit_s = _DATASET_KBIT_S.get(height) or max(500, round(2500 * width * height / (1280 * 720), -2))
        return cls(width, height, fps, seconds, int(kbit_s))

    def ffmpeg_argv(self, src: Path, dest: Path) -> list[str]:
        rate = f"{self.kbit_s}k"
        argv = ["ffmpeg", "-v", "error", "-y", "-r", str(self.fps), "-i", str(src)]
        if self.seconds is not None:
            argv += ["-t", str(self.seconds)]
        return [
            *argv,
            "-vf", f"scale={self.width}x{self.height},format=yuv420p",
            "-c:v", "libx264", "-preset", "medium", "-profile:v", "main", "-bf", "0",
            "-g", str(self.fps), "-keyint_min", str(self.fps), "-sc_threshold", "0",
            "-b:v", rate, "-maxrate", rate, "-bufsize", rate, "-an", "-f", "mp4", str(dest),
        ]  # fmt: skip


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


def transcode(src: Path, dest: Path, encoding: SampleEncoding) -> None:
    """``src`` encoded as ``encoding`` says: Debian's ffmpeg when installed (the data set's own command),
    else PyAV with the same settings."""
    tmp = dest.with_suffix(".part.mp4")
    if shutil.which("ffmpeg"):
        got = subprocess.run(encoding.ffmpeg_argv(src, tmp), capture_output=True, text=True, check=False)
        if got.returncode != 0:
            raise SampleError(f"ffmpeg could not encode {dest.name}: {got.stderr.strip()[-500:]}")
    else:
        _transcode_pyav(src, tmp, encoding)
    tmp.replace(dest)


def _transcode_pyav(src: Path, dest: Path, encoding: SampleEncoding) -> None:
    import av

    fps = encoding.fps
    last = None if encoding.seconds is None else encoding.seconds * fps
    rate = str(encoding.kbit_s * 1000)
    with av.open(str(src)) as inp, av.open(str(dest), "w", format="mp4") as out:
        vin = inp.streams.video[0]
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = encoding.width, encoding.height, "yuv420p"
        stream.options = {
            "preset": "medium", "profile": "main", "bf": "0", "b": rate, "maxrate": rate, "bufsize": rate,
            # x264's own names: the generic sc_threshold/keyint_min do not reach it through every FFmpeg
            # build. One slice per picture, as ffmpeg's frame threads give.
            "x264-params": f"keyint={fps}:min-keyint={fps}:scenecut=0:sliced-threads=0",
        }  # fmt: skip
        stream.codec_context.time_base = Fraction(1, fps)
        for i, frame in enumerate(inp.decode(vin)):
            if last is not None and i >= last:
                break
            scaled = frame.reformat(width=encoding.width, height=encoding.height, format="yuv420p")
            scaled.pts, scaled.time_base = i, Fraction(1, fps)
            # The source's own I-frames would become forced keyframes: x264 alone decides (every second).
            scaled.pict_type = av.video.frame.PictureType.NONE
            out.mux(stream.encode(scaled))
        out.mux(stream.encode(None))


def ensure_sample_video(path: Path, report: Callable[[str], None]) -> Path:
    """``path`` when it exists; else, for a ``vtest-<H>p<FPS>[-<S>s].mp4`` name, made from vtest.avi."""
    if not path.is_file():
        _make([path], report)
    return path


def ensure_sample_videos(directory: Path, report: Callable[[str], None]) -> list[Path]:
    """Every file of the data set in ``directory``, made where missing (vtest.avi fetched once)."""
    paths = [directory / n for n in STANDARD_NAMES]
    _make([p for p in paths if not p.is_file()], report)
    return paths


def _make(paths: list[Path], report: Callable[[str], None]) -> None:
    encodings = []
    for path in paths:
        encoding = SampleEncoding.from_name(path.name)
        if encoding is None:
            raise SampleError(f"video {path} does not exist (set VAP_SAMPLE_DATA_DIR or give a path)")
        encodings.append(encoding)
    if not paths:
        return
    with tempfile.TemporaryDirectory(prefix="vap-sample-") as work:
        avi = _source_avi(Path(work), report)
        for path, encoding in zip(paths, encodings, strict=True):
            report(f"making {path} from {avi.name} ({encoding.width}x{encoding.height}, {encoding.fps} fps)")
            path.parent.mkdir(parents=True, exist_ok=True)
            transcode(avi, path, encoding)


def slices_per_picture(path: Path) -> set[int]:
    """How many slices (NAL units of types 1 and 5) the stored pictures of an mp4's H.264 track have."""
    import av

    counts: set[int] = set()
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            data, i, n = bytes(packet), 0, 0
            while i + 4 < len(data):  # mp4 stores NAL units behind 4-byte lengths
                n += (data[i + 4] & 0x1F) in (1, 5)
                i += 4 + int.from_bytes(data[i : i + 4], "big")
            if data:
                counts.add(n)
    return counts
