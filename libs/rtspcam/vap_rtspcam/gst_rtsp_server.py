#!/usr/bin/python3
"""One simulated RTSP camera: serves the H.264 stream of an MP4 file in a loop over RTSP.

Run by the SYSTEM interpreter (/usr/bin/python3), because python3-gi and the GStreamer typelibs are
Debian packages and are not importable from the project venv. tests/rtsp/controller.py starts one
process per camera so that outages are independent (kill -9, SIGSTOP/SIGCONT for a hung camera).

How it serves:
- At start the file is demuxed once (`filesrc ! qtdemux ! h264parse ! appsink`) into in-memory H.264
  access units (Annex-B, SPS/PPS in front of every IDR). Nothing is ever decoded or re-encoded.
- Every RTSP session gets its own pipeline (`appsrc ! h264parse ! rtph264pay`, media not shared unless
  --shared), fed from frame 0. So frame i of a fresh session is frame i mod N of the file, bit-exact.
- Timestamps continue across loops (loop k adds k * clip duration) and the live pipeline's sinks sync
  to the clock, which paces delivery in real time at the file's frame rate.

Prints exactly one line `READY <url-without-credentials> ...` on stdout once the port is bound.
Exit codes: 0 clean stop, 2 bad arguments / unreadable file, 3 port could not be bound,
4 missing system packages.
"""

# Typing: gi is not installed in the venv (it is a Debian package), so the one `import gi` carries a
# "type: ignore" and every gi object is Any to mypy; the rest of the file is checked normally.
# gi.repository modules are imported inside functions, after missing_packages() has called
# gi.require_version, so `--check` can name missing packages instead of dying on an import.

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

# Which Debian package provides each thing we need; used by --check and by the error path, so a test
# run on an unprepared machine can skip with the name of the package to install.
GI_PACKAGES = {
    "Gst": "gir1.2-gstreamer-1.0",
    "GstApp": "gir1.2-gst-plugins-base-1.0",
    "GstRtsp": "gir1.2-gst-plugins-base-1.0",
    "GstRtspServer": "gir1.2-gst-rtsp-server-1.0",
}
ELEMENT_PACKAGES = {
    "filesrc": "libgstreamer1.0-0",
    "appsrc": "gstreamer1.0-plugins-base",
    "appsink": "gstreamer1.0-plugins-base",
    "qtdemux": "gstreamer1.0-plugins-good",
    "rtph264pay": "gstreamer1.0-plugins-good",
    "h264parse": "gstreamer1.0-plugins-bad",
}

PR_SET_PDEATHSIG = 1


def missing_packages() -> list[str]:
    """Debian packages that are needed but absent (empty list = this machine can serve)."""
    try:
        import gi  # type: ignore[import-not-found]  # the import itself is the check
    except ImportError:
        return ["python3-gi"]
    missing: list[str] = []
    for namespace, package in GI_PACKAGES.items():
        try:
            gi.require_version(namespace, "1.0")
        except ValueError:
            if package not in missing:
                missing.append(package)
    if missing:
        return missing
    from gi.repository import Gst  # type: ignore[import-not-found]

    Gst.init(None)
    for element, package in ELEMENT_PACKAGES.items():
        if Gst.ElementFactory.find(element) is None and package not in missing:
            missing.append(package)
    return missing


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="print missing Debian packages as JSON and exit")
    p.add_argument("--file", help="MP4 (or any qtdemux-able file) with an H.264 video track")
    p.add_argument(
        "--then",
        action="append",
        default=[],
        metavar="FILE",
        help="more files served after --file in the same loop, e.g. of another resolution "
        "(a camera whose stream changes size mid-way: new SPS in band)",
    )
    p.add_argument("--port", type=int, default=8554)
    p.add_argument("--address", default="127.0.0.1", help="listen address (loopback by default)")
    p.add_argument("--path", default="cam", help="mount point, e.g. 'cam' -> rtsp://host:port/cam")
    p.add_argument("--user", help="require RTSP authentication with this user")
    p.add_argument("--password", help="password for --user")
    # One scheme at a time: PyGObject rejects the OR of RTSPAuthMethod values (it is an enum in the GIR).
    p.add_argument("--auth", choices=["basic", "digest"], default="digest", help="scheme used with --user")
    p.add_argument(
        "--protocols",
        default="tcp,udp,udp-mcast",
        help="comma-separated lower transports the server accepts: tcp, udp, udp-mcast",
    )
    p.add_argument(
        "--shared",
        action="store_true",
        help="one pipeline for all clients, like a real camera (clients join mid-stream); "
        "default is a fresh pipeline from frame 0 per session",
    )
    p.add_argument("--parent-fd", type=int, help="exit when this pipe fd reports EOF (parent died)")
    p.add_argument("--pdeathsig", action="store_true", help="ask the kernel for SIGKILL on parent death")
    args = p.parse_args(argv)
    if not args.check and not args.file:
        p.error("--file is required")
    if (args.user is None) != (args.password is None):
        p.error("--user and --password go together")
    return args


@dataclass(frozen=True)
class Clip:
    """The file's access units in decode order with timestamps relative to the first one (ns)."""

    buffers: list[Any]  # Gst.Buffer, one access unit each
    pts: list[int]
    dts: list[int]
    duration: int  # one full pass of the clip; loop k is offset by k * duration
    caps: str
    width: int
    height: int
    fps_n: int
    fps_d: int


def load_clip(path: str) -> Clip:
    from gi.repository import Gst

    # h264parse: byte-stream + au alignment is what appsrc ! h264parse ! rtph264pay wants, and
    # config-interval=-1 puts SPS/PPS in front of every IDR so any GOP start is decodable on its own.
    pipeline = Gst.parse_launch(
        "filesrc name=file ! qtdemux name=d d.video_0 "
        "! h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au "
        "! appsink name=sink sync=false max-buffers=0 emit-signals=false"
    )
    # Set as a property, not in the launch string, so no path needs quoting.
    pipeline.get_by_name("file").set_property("location", path)
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    buffers: list[Any] = []
    caps: Any = None
    bus = pipeline.get_bus()
    msg: Any = None
    # Short pulls so a demux error (checked on the bus) ends the loop at once instead of after a timeout.
    # ("eos" alone is no loop condition: it is also true before the async switch to PLAYING is done.)
    while True:
        sample = sink.emit("try-pull-sample", 100 * Gst.MSECOND)
        if sample is not None:
            caps = sample.get_caps()
            buffers.append(sample.get_buffer())
            continue
        msg = bus.pop_filtered(Gst.MessageType.ERROR)
        if msg is not None or sink.get_property("eos"):
            break
    pipeline.set_state(Gst.State.NULL)
    if msg is not None:
        err, debug = msg.parse_error()
        raise RuntimeError(f"cannot demux {path}: {err.message} ({debug})")
    if not buffers or caps is None:
        raise RuntimeError(f"no H.264 video frames in {path}")

    s = caps.get_structure(0)
    ok_rate, fps_n, fps_d = s.get_fraction("framerate")
    if not ok_rate or fps_n <= 0:
        fps_n, fps_d = 25, 1  # variable-rate file: fall back to timestamps/duration below
    frame_ns = Gst.util_uint64_scale_int(Gst.SECOND, fps_d, fps_n)

    def ts(value: int, index: int) -> int:
        return index * frame_ns if value == Gst.CLOCK_TIME_NONE else value

    dts = [ts(b.dts if b.dts != Gst.CLOCK_TIME_NONE else b.pts, i) for i, b in enumerate(buffers)]
    pts = [ts(b.pts, i) for i, b in enumerate(buffers)]
    base = dts[0]
    dts = [t - base for t in dts]
    pts = [t - base for t in pts]
    last = buffers[-1].duration
    duration = dts[-1] + (last if last != Gst.CLOCK_TIME_NONE else frame_ns)
    return Clip(
        buffers=buffers,
        pts=pts,
        dts=dts,
        duration=duration,
        caps=caps.to_string(),
        width=s.get_value("width"),
        height=s.get_value("height"),
        fps_n=fps_n,
        fps_d=fps_d,
    )


def concat_clips(clips: list[Clip]) -> Clip:
    """One clip playing ``clips`` back to back; caps, size and rate are the first one's (the SPS/PPS in
    front of every IDR carry each part's own size)."""
    first = clips[0]
    buffers: list[Any] = []
    pts: list[int] = []
    dts: list[int] = []
    offset = 0
    for clip in clips:
        buffers += clip.buffers
        pts += [t + offset for t in clip.pts]
        dts += [t + offset for t in clip.dts]
        offset += clip.duration
    return Clip(
        buffers=buffers,
        pts=pts,
        dts=dts,
        duration=offset,
        caps=first.caps,
        width=first.width,
        height=first.height,
        fps_n=first.fps_n,
        fps_d=first.fps_d,
    )


class Feeder:
    """Pushes the clip into one session's appsrc, forever, with timestamps that continue across loops."""

    def __init__(self, clip: Clip, appsrc: Any) -> None:
        from gi.repository import Gst

        self.clip = clip
        self.index = 0  # frames pushed in this session
        self.discont = Gst.BufferFlags.DISCONT
        appsrc.connect("need-data", self.on_need_data)

    def on_need_data(self, appsrc: Any, _length: int) -> None:
        n = len(self.clip.buffers)
        loop, i = divmod(self.index, n)
        offset = loop * self.clip.duration
        buf = self.clip.buffers[i].copy()  # shallow: shares the memory, own timestamps/flags
        buf.pts = self.clip.pts[i] + offset
        buf.dts = self.clip.dts[i] + offset
        buf.duration = (
            self.clip.dts[i + 1] - self.clip.dts[i] if i + 1 < n else self.clip.duration - self.clip.dts[i]
        )
        if self.index > 0:
            # qtdemux marks the file's first buffer DISCONT; a loop is not a discontinuity for the stream.
            buf.unset_flags(self.discont)
        self.index += 1
        appsrc.emit("push-buffer", buf)


def build_server(args: argparse.Namespace, clip: Clip) -> Any:
    from gi.repository import Gst, GstRtsp, GstRtspServer

    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    # is-live: behaves like a camera (no seeking, no preroll, sinks sync to the clock => real-time pacing).
    # max-bytes bounds how far need-data runs ahead of the clock-synced sinks (the queued buffers share
    # the clip's memory, so this costs next to nothing; without a bound the feeder would never stop).
    factory.set_launch(
        f"( appsrc name=src is-live=true format=time max-bytes=2000000 caps={json.dumps(clip.caps)} "
        "! h264parse ! rtph264pay name=pay0 pt=96 config-interval=0 )"
    )
    factory.set_shared(args.shared)
    protocols = GstRtsp.RTSPLowerTrans(0)
    names = {
        "tcp": GstRtsp.RTSPLowerTrans.TCP,
        "udp": GstRtsp.RTSPLowerTrans.UDP,
        "udp-mcast": GstRtsp.RTSPLowerTrans.UDP_MCAST,
    }
    for name in filter(None, (x.strip() for x in args.protocols.split(","))):
        if name not in names:
            raise ValueError(f"unknown protocol {name!r}; use tcp, udp, udp-mcast")
        protocols |= names[name]
    factory.set_protocols(protocols)

    feeders: list[Feeder] = []

    def on_media_configure(_factory: Any, media: Any) -> None:
        appsrc = media.get_element().get_child_by_name("src")
        feeder = Feeder(clip, appsrc)
        feeders.append(feeder)
        # Drop our reference when the session ends so a long demo does not accumulate feeders.
        media.connect("unprepared", lambda _m: feeders.remove(feeder))

    factory.connect("media-configure", on_media_configure)

    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        if args.auth == "basic":
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
        else:
            auth.add_digest(args.user, args.password, token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        server.set_auth(auth)
        role, _ = Gst.Structure.from_string(
            "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
        )
        factory.add_role_from_structure(role)

    server.get_mount_points().add_factory("/" + args.path.strip("/"), factory)
    return server


def watch_parent(args: argparse.Namespace) -> None:
    from gi.repository import GLib

    if args.pdeathsig:
        # SIGKILL also ends a SIGSTOPped camera whose test runner died; only valid when the spawning
        # thread lives as long as the runner (the controller asks for it from the main thread only).
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if args.parent_fd is not None:
        # The controller holds the write end; EOF means the controller process is gone, whichever
        # thread started us. Catches the race where the parent died before prctl above.
        def on_parent_gone(*_: object) -> bool:
            # No goodbye message: stdout/stderr are pipes to the dead parent, and a print would raise
            # BrokenPipeError here and skip the exit.
            os._exit(0)

        GLib.io_add_watch(
            GLib.IOChannel.unix_new(args.parent_fd),
            GLib.PRIORITY_DEFAULT,
            GLib.IOCondition.IN | GLib.IOCondition.HUP | GLib.IOCondition.ERR,
            on_parent_gone,
        )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    missing = missing_packages()
    if args.check:
        print(json.dumps({"missing": missing}))
        return 0
    if missing:
        print(f"missing Debian packages: {' '.join(missing)}", file=sys.stderr)
        return 4

    from gi.repository import GLib, Gst

    Gst.init(None)
    loop = GLib.MainLoop()
    watch_parent(args)
    try:
        clip = concat_clips([load_clip(path) for path in [args.file, *args.then]])
        server = build_server(args, clip)
    except (RuntimeError, ValueError, GLib.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if server.attach(None) == 0:
        print(f"error: cannot listen on {args.address}:{args.port}", file=sys.stderr, flush=True)
        return 3

    # Sessions of clients that vanished without TEARDOWN (e.g. UDP clients killed) would keep their
    # pipeline running until the 60 s session timeout; sweep expired ones regularly.
    pool = server.get_session_pool()
    GLib.timeout_add_seconds(2, lambda: pool.cleanup() >= 0)

    def quit_loop() -> bool:
        loop.quit()
        return False

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, quit_loop)

    port = server.get_bound_port()
    url = f"rtsp://{args.address}:{port}/{args.path.strip('/')}"
    print(
        f"READY {url} frames={len(clip.buffers)} fps={clip.fps_n}/{clip.fps_d} "
        f"size={clip.width}x{clip.height} pid={os.getpid()}",
        flush=True,
    )
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
