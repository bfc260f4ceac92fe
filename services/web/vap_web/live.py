"""Live view of watched cameras: one ``ChannelWatch`` per camera somebody looks at, shared by its viewers.

A watch needs three inputs and starts them only while it has viewers:

- the channel's FrameRefs from NATS (``vap.frames.<channel>``; ``vap.frames.<channel>.<node>`` with
  ``node_id``), kept for the last few dozen frames, so the tracked result of frame N can be drawn on frame
  N itself;
- tracked detections from the control API (StreamDetections, tracked, include_empty): at most ``max_fps``
  of them per second are turned into a frame message (JPEG of that very frame from the ring + its tracks);
- analytics events (StreamEvents), for the running line and zone figures and the event list.

Without tracked results for ``raw_after_s`` (inference or tracker busy, restarting or behind) the newest
raw frame is sent instead, marked ``raw``, so the picture never freezes while the camera streams.

Viewers never slow anything down: each has room for one pending frame (a newer one replaces it) and a
short queue of text messages (the oldest are dropped), and a sender task per viewer does the writing.

Each viewer brings its own token, and a watch serves only viewers whose token the control API still accepts:
every ``token_cache_s`` it asks again for each distinct token, and a viewer whose token is refused (there, or
by a control stream answering UNAUTHENTICATED) is closed with a ``ViewerClosed`` (the page then goes to the
login form). The control streams use the newest viewer's token not refused, so rotating tokens (control
restarted with a new list) never leaves the other viewers on raw frames behind a dead token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc

from vap_common import subjects
from vap_common.logs import get_logger
from vap_common.tasks import cancel_all
from vap_framebus import AsyncFrameSubscriber
from vap_proto.v1 import control_pb2, frame_pb2
from vap_web import metrics, payloads
from vap_web.auth import TokenChecker
from vap_web.control import ControlClient, metadata
from vap_web.frames import FrameEncoder
from vap_web.payloads import Json
from vap_web.settings import WebSettings

_log = get_logger("vap.web.live")

KEPT_REFS = 64
# This many unreadable frames in a row: the ring is not on this host (or gone); the viewers are told.
UNREADABLE_NOTICE = 10
TEXT_QUEUE = 64
RETRY_S = 1.0
# Codes a control stream answers when the token it was opened with is (no longer) good.
REFUSED_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
TOKEN_REFUSED = "the control API no longer accepts this token: log in again"  # noqa: S105 - a message


def frame_message(header: Json, jpeg: bytes) -> bytes:
    """A binary WebSocket message: 4-byte big-endian header length, the JSON header, the JPEG."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack(">I", len(head)) + head + jpeg


@dataclass(frozen=True)
class ViewerClosed:
    """The last message of a viewer the watch no longer serves (its token was refused)."""

    reason: str


class Viewer:
    """One browser's mailbox: the newest frame and a bounded queue of JSON texts; ``token`` is the one its
    page logged in with."""

    def __init__(self, token: str = "") -> None:
        self.token = token
        self.joined = time.monotonic()
        self.frame: bytes | None = None
        self.texts: deque[str] = deque(maxlen=TEXT_QUEUE)
        self.frames_replaced = 0
        self.closed: ViewerClosed | None = None
        self._wake = asyncio.Event()

    def close(self, reason: str) -> None:
        """No more messages but this one: ``messages()`` yields a ``ViewerClosed`` and ends."""
        if self.closed is None:
            self.closed = ViewerClosed(reason)
            self._wake.set()

    def offer_frame(self, message: bytes) -> None:
        if self.frame is not None:
            self.frames_replaced += 1
            metrics.FRAMES_REPLACED.inc()
        self.frame = message
        self._wake.set()

    def offer_text(self, message: Json) -> None:
        self.texts.append(json.dumps(message, separators=(",", ":")))
        self._wake.set()

    async def messages(self) -> AsyncIterator[str | bytes | ViewerClosed]:
        """Pending messages, texts first (small), then the newest frame; waits when there are none. After
        ``close()``: the ``ViewerClosed`` and nothing else."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.closed is not None:
                yield self.closed
                return
            while self.texts:
                yield self.texts.popleft()
            if self.frame is not None:
                frame, self.frame = self.frame, None
                yield frame


class ChannelWatch:
    def __init__(
        self,
        scenario_id: str,
        channel_id: str,
        *,
        client: ControlClient,
        checker: TokenChecker,
        bus: AsyncFrameSubscriber,
        encoder: FrameEncoder,
        settings: WebSettings,
    ) -> None:
        self.scenario_id = scenario_id
        self.channel_id = channel_id
        self.viewers: set[Viewer] = set()
        self.counts = payloads.RunningCounts()
        self.frames_sent = 0
        self._client = client
        self._checker = checker
        self._token_check_s = max(1.0, settings.token_cache_s)
        self._bus = bus
        self._encoder = encoder
        self._min_gap = 1.0 / settings.max_fps
        self._raw_after = settings.raw_after_s
        self._node_id = settings.node_id
        self._refs: OrderedDict[tuple[int, int], frame_pb2.FrameRef] = OrderedDict()
        self._latest_ref: frame_pb2.FrameRef | None = None
        self._sent_ref: tuple[int, int] | None = None
        self._next_send = 0.0
        self._unreadable = 0
        self._last_tracked = 0.0
        self._sid: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._recount = asyncio.Event()  # a crossing happened: query the counts again soon

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        subject = subjects.frames(self.channel_id, self._node_id)
        self._sid = await self._bus.subscribe(subject, self._on_frame_ref)
        self._tasks = [
            asyncio.ensure_future(self._forever(self._tracked)),
            asyncio.ensure_future(self._forever(self._events)),
            asyncio.ensure_future(self._forever(self._line_counts)),
            asyncio.ensure_future(self._raw_fallback()),
            asyncio.ensure_future(self._check_tokens()),
        ]
        _log.info("watching", scenario=self.scenario_id, channel=self.channel_id)

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        if self._sid is not None:
            with contextlib.suppress(Exception):
                await self._bus.unsubscribe(self._sid)
        _log.info("stopped watching", scenario=self.scenario_id, frames_sent=self.frames_sent)

    def add(self, viewer: Viewer) -> None:
        self.viewers.add(viewer)
        viewer.offer_text(self.counts.as_json())

    # -- tokens ----------------------------------------------------------------------------------------------
    def _stream_token(self) -> str | None:
        """The newest open viewer's token: after a rotation the newest login likely holds a good one."""
        open_viewers = [v for v in self.viewers if v.closed is None]
        return max(open_viewers, key=lambda v: v.joined).token if open_viewers else None

    def _refuse(self, token: str) -> None:
        """Close every viewer of ``token``; the gateway's cache forgets it, so its next use is asked again."""
        self._checker.forget(token)
        refused = [v for v in self.viewers if v.token == token]
        for viewer in refused:
            viewer.close(TOKEN_REFUSED)
            self.viewers.discard(viewer)
        if refused:
            metrics.VIEWERS_REFUSED.inc(len(refused))
            _log.warning("viewers closed: token refused", scenario=self.scenario_id, viewers=len(refused))

    async def _check_tokens(self) -> None:
        while True:
            await asyncio.sleep(self._token_check_s)
            for token in {v.token for v in self.viewers}:
                try:
                    accepted = await self._client.token_accepted(token)
                except grpc.aio.AioRpcError:
                    continue  # the API is down or busy: that says nothing about the token
                if not accepted:
                    self._refuse(token)

    # -- inputs ----------------------------------------------------------------------------------------------
    def _on_frame_ref(self, subject: str, payload: bytes) -> None:
        # Called inline by the frame bus: parse and file away, nothing more.
        ref = frame_pb2.FrameRef.FromString(payload)
        self._refs[(ref.stream_epoch, ref.sequence)] = ref
        if len(self._refs) > KEPT_REFS:
            self._refs.popitem(last=False)
        self._latest_ref = ref

    async def _forever(self, source: Callable[[str], Awaitable[None]]) -> None:
        while True:
            token = self._stream_token()
            if token is not None:
                try:
                    await source(token)
                except grpc.aio.AioRpcError as exc:
                    _log.warning("control stream ended", scenario=self.scenario_id, code=exc.code().name)
                    if exc.code() in REFUSED_CODES:
                        self._refuse(token)
                        continue  # straight on with the next viewer's token
            await asyncio.sleep(RETRY_S)

    async def _tracked(self, token: str) -> None:
        request = control_pb2.StreamDetectionsRequest(
            scenario_ids=[self.scenario_id], tracked=True, include_empty=True
        )
        async for item in self._client.stub.StreamDetections(request, metadata=metadata(token)):
            now = time.monotonic()
            self._last_tracked = now
            if now < self._next_send:
                continue
            info = item.frame.frame
            ref = self._refs.get((info.stream_epoch, info.sequence))
            basis = ref if ref is not None else self._latest_ref
            if basis is None:
                continue
            self._next_send = now + self._min_gap
            header: Json = {
                "type": "frame",
                "raw": False,
                "exact": True,
                "seq": info.sequence,
                "capture_ms": info.capture_time_ns // 1_000_000,
                "width": info.width or basis.source_width or basis.width,
                "height": info.height or basis.source_height or basis.height,
                "tracks": payloads.tracks(item.frame),
            }
            if ref is None or not await self._send(ref, header):
                # The frame itself is gone from the ring (a fast camera, a small ring): draw the boxes on
                # the newest frame instead, marked as approximate, rather than show nothing.
                latest = self._latest_ref
                if latest is not None:
                    header["exact"] = False
                    await self._send(latest, header)

    async def _raw_fallback(self) -> None:
        while True:
            await asyncio.sleep(self._min_gap)
            now = time.monotonic()
            ref = self._latest_ref
            if ref is None or now - self._last_tracked < self._raw_after or now < self._next_send:
                continue
            self._next_send = now + self._min_gap
            header: Json = {
                "type": "frame",
                "raw": True,
                "exact": True,
                "seq": ref.sequence,
                "capture_ms": ref.capture_time_ns // 1_000_000,
                "width": ref.source_width or ref.width,
                "height": ref.source_height or ref.height,
                "tracks": [],
            }
            await self._send(ref, header)

    async def _send(self, ref: frame_pb2.FrameRef, header: Json) -> bool:
        """Encode ``ref``'s frame and hand it to every viewer; False when the slot was overwritten."""
        key = (ref.stream_epoch, ref.sequence)
        if key == self._sent_ref:
            return True
        jpeg = await self._encoder.encode(ref)
        if jpeg is None:
            self._unreadable += 1
            if self._unreadable == UNREADABLE_NOTICE:
                notice = {
                    "type": "notice",
                    "message": "this camera's frames cannot be read here: the web view must run on the host "
                    "that decodes the camera (its shared-memory ring)",
                }
                for viewer in self.viewers:
                    viewer.offer_text(notice)
            return False
        self._unreadable = 0
        self._sent_ref = key
        self.frames_sent += 1
        message = frame_message(header, jpeg)
        for viewer in self.viewers:
            viewer.offer_frame(message)
        return True

    async def _line_counts(self, token: str) -> None:
        """The lines' counts from QueryCounts (what the camera list and the API say): after each crossing
        (once the control service has stored it) and every COUNTS_REFRESH_S."""
        while True:
            summed = await self._client.window_totals(token, self.scenario_id)
            if self.counts.set_lines(summed):
                for viewer in self.viewers:
                    viewer.offer_text(self.counts.as_json())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recount.wait(), COUNTS_REFRESH_S)
                await asyncio.sleep(STORE_DELAY_S)  # the inbox stores results in batches
            self._recount.clear()

    async def _events(self, token: str) -> None:
        request = control_pb2.StreamEventsRequest(scenario_ids=[self.scenario_id])
        async for item in self._client.stub.StreamEvents(request, metadata=metadata(token)):
            if item.event.HasField("line_crossing"):
                self._recount.set()
            changed = self.counts.apply(item.event)
            message = {"type": "event", **payloads.event(item.event)}
            for viewer in self.viewers:
                viewer.offer_text(message)
                if changed:
                    viewer.offer_text(self.counts.as_json())


# Line counts are queried again this long after a crossing event (the inbox stores results in batches of
# up to about half a second) and at least this often.
STORE_DELAY_S = 1.0
COUNTS_REFRESH_S = 5.0


class Watches:
    """The running watches by scenario id; a watch starts with its first viewer and stops with its last."""

    def __init__(
        self,
        client: ControlClient,
        bus: AsyncFrameSubscriber,
        encoder: FrameEncoder,
        settings: WebSettings,
        checker: TokenChecker | None = None,
    ) -> None:
        # The gateway's one token cache: build_app's middleware uses this same checker.
        self.checker = checker or TokenChecker(client, settings.token_cache_s)
        self._client = client
        self._bus = bus
        self._encoder = encoder
        self._settings = settings
        self._watches: dict[str, ChannelWatch] = {}
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._watches)

    async def join(self, scenario_id: str, channel_id: str, viewer: Viewer) -> ChannelWatch:
        async with self._lock:
            watch = self._watches.get(scenario_id)
            if watch is None:
                watch = ChannelWatch(
                    scenario_id,
                    channel_id,
                    client=self._client,
                    checker=self.checker,
                    bus=self._bus,
                    encoder=self._encoder,
                    settings=self._settings,
                )
                await watch.start()
                self._watches[scenario_id] = watch
                metrics.WATCHED.set(len(self._watches))
            watch.add(viewer)
            return watch

    async def leave(self, scenario_id: str, viewer: Viewer) -> None:
        async with self._lock:
            watch = self._watches.get(scenario_id)
            if watch is None:
                return
            watch.viewers.discard(viewer)
            if not watch.viewers:
                del self._watches[scenario_id]
                metrics.WATCHED.set(len(self._watches))
                await watch.stop()

    async def close(self) -> None:
        async with self._lock:
            watches, self._watches = list(self._watches.values()), {}
            metrics.WATCHED.set(0)
        for watch in watches:
            await watch.stop()
