"""From a SourceSpec to an open FFmpeg input: which demuxer options each kind of source needs.

Kinds: RTSP/RTSPS cameras (TCP or UDP transport, credentials in the URL), HTTP(S) streams, local files
(``file://`` URL or plain path) and webcams (an index "0" or a V4L2 device path). ``plan_source`` checks the
spec without touching the network (the agent uses it to refuse a bad spec up front); ``open_source`` opens
it with PyAV, bounding the open and every read by timeouts so that a dead or hung camera raises instead of
blocking forever (PyAV's interrupt callback: FFmpeg aborts the blocking call with ExitError).
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import av
import av.error

from vap_common.redact import redact_text, redact_url
from vap_decoder.errors import InvalidSourceError, PermanentSourceError, SourceError, TransientSourceError
from vap_decoder.settings import DecoderSettings
from vap_proto.v1.source_pb2 import RtspTransport, SourceSpec


class SourceKind(enum.Enum):
    RTSP = "rtsp"
    HTTP = "http"
    FILE = "file"
    WEBCAM = "webcam"


_SCHEMES = {
    "rtsp": SourceKind.RTSP,
    "rtsps": SourceKind.RTSP,
    "http": SourceKind.HTTP,
    "https": SourceKind.HTTP,
    "file": SourceKind.FILE,
}
SUPPORTED_SCHEMES = tuple(sorted(_SCHEMES))


@dataclass(frozen=True)
class SourcePlan:
    """How to open one source. ``url`` may carry credentials: never log it, log ``redacted_url``."""

    kind: SourceKind
    url: str
    redacted_url: str
    format: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    # Live sources deliver frames at their own pace and end only by failing; files end (EOF) and may be
    # paced and looped.
    live: bool = True
    realtime: bool = False
    loop: bool = False
    thread_type: str = "SLICE"
    thread_count: int = 0
    # AVCodecContext options, applied when the decoder opens (at the first packet).
    codec_options: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # dataclass' repr would print the URL with its credentials
        return f"SourcePlan({self.kind.value}, {self.redacted_url!r})"


def _seconds(duration: Any, default: float) -> float:
    """A google.protobuf.Duration field as seconds; ``default`` when unset or not positive."""
    value = duration.seconds + duration.nanos / 1e9
    return value if value > 0 else default


# urllib's own words would quote the port, which can be part of a password ("rtsp://user:pa/ss@host").
_BAD_NETLOC = "invalid port (not a number in 0-65535) or IPv6 host"


def plan_source(spec: SourceSpec, settings: DecoderSettings) -> SourcePlan:
    """Check ``spec`` and work out how to open it; InvalidSourceError when it can never work."""
    raw = spec.url.strip()
    if not raw:
        raise InvalidSourceError("source url is empty")
    redacted = redact_url(raw)
    open_timeout = _seconds(spec.open_timeout, settings.open_timeout_s)
    read_timeout = _seconds(spec.read_timeout, settings.read_timeout_s)
    common: dict[str, Any] = {
        "url": raw,
        "redacted_url": redacted,
        "open_timeout_s": open_timeout,
        "read_timeout_s": read_timeout,
        "thread_count": settings.decode_threads,
        "thread_type": settings.live_thread_type,
        "codec_options": {"skip_loop_filter": "all"} if settings.skip_loop_filter else {},
    }
    if raw.isdigit():
        return SourcePlan(SourceKind.WEBCAM, format="v4l2", **{**common, "url": f"/dev/video{int(raw)}"})
    if raw.startswith("/dev/video"):
        return SourcePlan(SourceKind.WEBCAM, format="v4l2", **common)
    if "://" not in raw:
        return _file_plan(Path(raw), spec, settings, common)
    try:
        parts = urlsplit(raw)
    except ValueError:
        raise InvalidSourceError(f"malformed source url {redacted}: {_BAD_NETLOC}") from None
    scheme = parts.scheme.lower()
    kind = _SCHEMES.get(scheme)
    if kind is None:
        raise InvalidSourceError(
            f"unsupported source scheme {scheme!r} in {redacted} (supported: {', '.join(SUPPORTED_SCHEMES)},"
            " a file path or a webcam index/device)"
        )
    if kind is SourceKind.FILE:
        if parts.netloc not in ("", "localhost"):
            raise InvalidSourceError(f"file url must name a local file, not one on a host: {redacted}")
        return _file_plan(Path(unquote(parts.path)), spec, settings, common)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # e.g. a non-numeric port
        raise InvalidSourceError(f"malformed source url {redacted}: {_BAD_NETLOC}") from None
    if not host:
        raise InvalidSourceError(f"source url {redacted} has no host")
    del port  # validated above (parts.port raises for a bad one); FFmpeg uses the URL as is
    if kind is SourceKind.RTSP:
        return SourcePlan(kind, options=_rtsp_options(scheme, spec, read_timeout), **common)
    return SourcePlan(kind, options={"rw_timeout": str(int(read_timeout * 1e6))}, **common)


def _rtsp_options(scheme: str, spec: SourceSpec, read_timeout: float) -> dict[str, str]:
    # RTSPS is RTSP over TLS: its RTP goes interleaved over the TLS connection whatever the spec says.
    udp = spec.rtsp_transport == RtspTransport.RTSP_TRANSPORT_UDP and scheme == "rtsp"
    return {
        "rtsp_transport": "udp" if udp else "tcp",
        # Measured: cuts open-to-first-frame from ~1.1 s to ~0.09 s. The decoder needs no probing: the
        # ring is sized from the first decoded frame, not from stream parameters.
        "analyzeduration": "0",
        "probesize": "32768",
        # A socket-level bound as well as PyAV's interrupt callback (microseconds).
        "timeout": str(int(read_timeout * 1e6)),
        # Not "fflags nobuffer": measured, it discards the packets read while probing, i.e. the first GOP
        # (up to a second of video) of every session, for no latency gain once probing is this short.
    }


def _file_plan(path: Path, spec: SourceSpec, settings: DecoderSettings, common: dict[str, Any]) -> SourcePlan:
    # Checked here as well as at open: a missing file is a permanent failure, never a reason to retry.
    if not path.exists():
        raise PermanentSourceError(f"file not found: {path}")
    if not path.is_file():
        raise PermanentSourceError(f"not a regular file: {path}")
    if not os.access(path, os.R_OK):
        raise PermanentSourceError(f"file not readable: {path}")
    # Paced files behave like cameras (latency matters); unpaced ones are decoded for throughput.
    thread_type = settings.live_thread_type if spec.realtime else settings.file_thread_type
    fields = {**common, "url": str(path), "redacted_url": str(path), "thread_type": thread_type}
    return SourcePlan(SourceKind.FILE, live=False, realtime=spec.realtime, loop=spec.loop, **fields)


class OpenSource:
    """An open input and its first video stream. Use as a context manager; ``close()`` is idempotent."""

    def __init__(self, plan: SourcePlan, container: av.container.InputContainer) -> None:
        self.plan = plan
        self.container = container
        streams = container.streams.video
        if not streams:
            container.close()
            message = f"no video stream in {plan.redacted_url}"
            raise PermanentSourceError(message) if not plan.live else TransientSourceError(message)
        self.stream = streams[0]
        self.stream.thread_type = plan.thread_type
        if plan.thread_count:
            self.stream.codec_context.thread_count = plan.thread_count
        if plan.codec_options:
            self.stream.codec_context.options = {**self.stream.codec_context.options, **plan.codec_options}
        self.codec = self.stream.codec_context.name or ""
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.source_fps = float(rate) if rate else 0.0
        self.time_base = float(self.stream.time_base) if self.stream.time_base else 0.0

    def packets(self) -> Any:
        """Video packets in decode order; the last one has size 0 (flush) at end of input. A read that
        blocks longer than the read timeout raises av.error.ExitError."""
        return self.container.demux(self.stream)

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_source(plan: SourcePlan) -> OpenSource:
    """Open ``plan``; SourceError (permanent or transient, with a redacted reason) when it fails."""
    try:
        container = av.open(
            plan.url,
            format=plan.format,
            options=plan.options,
            timeout=(plan.open_timeout_s, plan.read_timeout_s),
        )
    except av.error.FFmpegError as exc:
        raise classify_error(exc, plan, opening=True) from None
    return OpenSource(plan, container)


def describe(exc: BaseException) -> str:
    """A one-line, credential-free description of an FFmpeg (or other) error."""
    if isinstance(exc, av.error.FFmpegError):
        text = exc.strerror or type(exc).__name__
        if exc.filename:
            text += f": {exc.filename}"
    else:
        text = str(exc) or type(exc).__name__
    return redact_text(text)


def classify_error(exc: BaseException, plan: SourcePlan, *, opening: bool) -> SourceError:
    """Turn an FFmpeg error into a permanent or transient SourceError with a readable reason."""
    what = "open" if opening else "read"
    if isinstance(exc, av.error.ExitError):  # our interrupt callback: the open/read timeout expired
        limit = plan.open_timeout_s if opening else plan.read_timeout_s
        return TransientSourceError(f"{what} timed out: no data from {plan.redacted_url} for {limit:g} s")
    reason = f"{what} failed: {describe(exc)}"
    if plan.kind is SourceKind.FILE and isinstance(
        exc,
        av.error.FileNotFoundError
        | av.error.IsADirectoryError
        | av.error.PermissionError
        | av.error.InvalidDataError
        | av.error.DecoderNotFoundError
        | av.error.DemuxerNotFoundError,
    ):
        return PermanentSourceError(reason)
    if isinstance(
        exc, av.error.DecoderNotFoundError | av.error.DemuxerNotFoundError | av.error.ProtocolNotFoundError
    ):
        return PermanentSourceError(reason)
    # Everything else on a live source (refused, reset, 404 while a camera reboots, 401 until someone fixes
    # the password...) may heal: retry with backoff; max_reconnect_attempts bounds it when asked.
    return TransientSourceError(reason)
