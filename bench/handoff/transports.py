"""The transports compared by the handoff benchmark, each as a writer side and a reader side.

Names are the ones the JSON rows carry: ``shmring+nats``, ``shmring``, ``mp.queue``, ``nats-payload``,
``iceoryx2``, and ``nats-floor`` (no frame: the machine's floor for anything through nats-server).
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from typing import Any

import nats
import numpy as np
from nats.aio.client import Client as NatsClient
from nats.aio.subscription import Subscription

from bench.handoff.common import STOP_T0, Frame, ReaderSide, Resolution, WriterSide
from bench.handoff.floor import FloorReader, FloorWriter
from vap_framebus import AsyncFrameSubscriber, FramePublisher
from vap_proto.v1.frame_pb2 import FrameRef, PixelFormat
from vap_shmring import RingReader, RingWriter, cleanup_stale_rings

SUBJECT = "vap.bench.handoff"
_T0_HEADER = "t0"
_T0 = struct.Struct("<q")
# Up to `window` 4K frames may wait in the subscriber's queue; the default 64 MiB limit would drop them.
_SUB_PENDING_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class TransportSpec:
    """What a spawned reader needs to build its side: plain picklable values."""

    name: str
    resolution: Resolution
    nats_url: str = ""
    ring_name: str = ""
    service_name: str = ""


def _local_buffer(resolution: Resolution) -> Frame:
    return np.empty(resolution.shape, dtype=np.uint8)


# --- the ring: pixels stay in the slot, only the FrameRef moves ------------------------------------------

RING_SLOTS = 8  # more than the throughput window, so no slot is rewritten while its reader holds it
RING_CHANNEL = "bench-handoff"


class _RingWriterBase(WriterSide):
    def __init__(self, spec: TransportSpec) -> None:
        self._spec = spec
        self._ring: RingWriter | None = None

    async def open(self) -> None:
        cleanup_stale_rings()
        self._ring = RingWriter.create(
            RING_CHANNEL,
            width=self._spec.resolution.width,
            height=self._spec.resolution.height,
            pixel_format=PixelFormat.PIXEL_FORMAT_BGR24,
            slots=RING_SLOTS,
        )

    def _write(self, source: Frame, sequence: int) -> bytes:
        assert self._ring is not None
        slot = self._ring.begin()
        np.copyto(slot.image, source)  # the decoder's conversion would write here
        ref = self._ring.commit(sequence=sequence, capture_time_ns=time.time_ns())
        return ref.SerializeToString()  # t0 = ref.commit_time_ns, stamped by commit()

    async def close(self) -> None:
        if self._ring is not None:
            self._ring.close()


class _RingReaderBase(ReaderSide):
    def __init__(self, spec: TransportSpec) -> None:
        self._ring_name = spec.ring_name
        self._ring: RingReader | None = None
        self._ref: FrameRef | None = None

    async def open(self) -> None:
        self._ring = RingReader.attach(self._ring_name)

    def _view(self, data: bytes) -> tuple[int, Frame | None]:
        assert self._ring is not None
        ref = FrameRef.FromString(data)
        if not ref.ring:
            return STOP_T0, None
        self._ref = ref
        return ref.commit_time_ns, self._ring.view(ref).image

    def release(self) -> bool:
        assert self._ring is not None and self._ref is not None
        return self._ring.is_current(self._ref)

    async def close(self) -> None:
        if self._ring is not None:
            self._ring.close()


class RingNatsWriter(_RingWriterBase):
    """``shmring+nats``: the FrameRef published on NATS, as the decoder does (vap_framebus: one syscall
    per publish, synchronous like a decoder loop)."""

    def __init__(self, spec: TransportSpec) -> None:
        super().__init__(spec)
        self._pub: FramePublisher | None = None

    async def open(self) -> None:
        await super().open()
        self._pub = FramePublisher()
        self._pub.connect(self._spec.nats_url, "bench-handoff-writer")

    async def send(self, source: Frame, sequence: int) -> None:
        assert self._pub is not None
        if not self._pub.publish(SUBJECT, self._write(source, sequence)):
            raise RuntimeError(f"FrameRef {sequence} dropped: {self._pub.last_error}")

    async def send_stop(self) -> None:
        assert self._pub is not None
        self._pub.publish(SUBJECT, FrameRef().SerializeToString())
        self._pub.flush()

    async def close(self) -> None:
        if self._pub is not None:
            self._pub.close()
        await super().close()


class RingNatsReader(_RingReaderBase):
    """The FrameRef handler runs inline in the subscriber's ``data_received`` (no task hop): it parses the
    FrameRef, takes the numpy view of the slot and stamps t1 right there, as an inference service's
    handler would before handing the frame to its batcher. ``receive()`` then only waits for that."""

    def __init__(self, spec: TransportSpec) -> None:
        super().__init__(spec)
        self._url = spec.nats_url
        self._sub: AsyncFrameSubscriber | None = None
        self._inbox: deque[tuple[int, Frame | None, FrameRef | None, int]] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def _on_ref(self, subject: str, payload: bytes) -> None:
        t0, view = self._view(payload)
        self._inbox.append((t0, view, self._ref, time.time_ns()))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def open(self) -> None:
        await super().open()
        self._sub = AsyncFrameSubscriber()
        await self._sub.connect(self._url, "bench-handoff-reader")
        await self._sub.subscribe(SUBJECT, self._on_ref)  # returns once the server has the subscription

    async def receive(self) -> tuple[int, Frame | None]:
        while not self._inbox:
            # Not asyncio.wait_for(): on 3.11 it wraps the future in another one, a second loop hop.
            self._waiter = asyncio.get_running_loop().create_future()
            async with asyncio.timeout(30):
                await self._waiter
        t0, view, self._ref, self.held_ns = self._inbox.popleft()
        return t0, view

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.close()
        await super().close()


class RingPipeWriter(_RingWriterBase):
    """``shmring``: the FrameRef through a local pipe, the cheapest possible wake-up of the reader."""

    def __init__(self, spec: TransportSpec, pipe: Connection) -> None:
        super().__init__(spec)
        self._pipe = pipe

    async def send(self, source: Frame, sequence: int) -> None:
        self._pipe.send_bytes(self._write(source, sequence))

    async def send_stop(self) -> None:
        self._pipe.send_bytes(FrameRef().SerializeToString())


class RingPipeReader(_RingReaderBase):
    def __init__(self, spec: TransportSpec, pipe: Connection) -> None:
        super().__init__(spec)
        self._pipe = pipe

    async def receive(self) -> tuple[int, Frame | None]:
        return self._view(self._pipe.recv_bytes())


# --- mp.queue: the pickled frame through multiprocessing.Queue -------------------------------------------


class QueueWriter(WriterSide):
    def __init__(self, spec: TransportSpec, queue: Queue[Any]) -> None:
        self._queue = queue
        self._buffer = _local_buffer(spec.resolution)

    async def send(self, source: Frame, sequence: int) -> None:
        np.copyto(self._buffer, source)  # the decoder's own output buffer
        self._queue.put((time.time_ns(), self._buffer))

    async def send_stop(self) -> None:
        self._queue.put((STOP_T0, None))


class QueueReader(ReaderSide):
    def __init__(self, queue: Queue[Any]) -> None:
        self._queue = queue

    async def receive(self) -> tuple[int, Frame | None]:
        t0, frame = self._queue.get()
        return int(t0), frame


# --- nats-payload: the frame bytes as one NATS message ---------------------------------------------------


class NatsPayloadWriter(WriterSide):
    def __init__(self, spec: TransportSpec) -> None:
        self._url = spec.nats_url
        self._buffer = _local_buffer(spec.resolution)
        self._nc: NatsClient | None = None

    async def open(self) -> None:
        self._nc = await nats.connect(self._url)

    async def send(self, source: Frame, sequence: int) -> None:
        assert self._nc is not None
        np.copyto(self._buffer, source)
        t0 = time.time_ns()
        await self._nc.publish(SUBJECT, self._buffer.tobytes(), headers={_T0_HEADER: str(t0)})

    async def send_stop(self) -> None:
        assert self._nc is not None
        await self._nc.publish(SUBJECT, b"", headers={_T0_HEADER: str(STOP_T0)})
        await self._nc.flush()

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()


class NatsPayloadReader(ReaderSide):
    def __init__(self, spec: TransportSpec) -> None:
        self._url = spec.nats_url
        self._shape = spec.resolution.shape
        self._nc: NatsClient | None = None
        self._sub: Subscription | None = None

    async def open(self) -> None:
        self._nc = await nats.connect(self._url)
        self._sub = await self._nc.subscribe(SUBJECT, pending_bytes_limit=_SUB_PENDING_BYTES)
        await self._nc.flush()  # the subscription is known to the server before the writer starts

    async def receive(self) -> tuple[int, Frame | None]:
        assert self._sub is not None
        msg = await self._sub.next_msg(timeout=30)
        t0 = int((msg.headers or {}).get(_T0_HEADER, STOP_T0))
        if t0 == STOP_T0:
            return STOP_T0, None
        return t0, np.frombuffer(msg.data, dtype=np.uint8).reshape(self._shape)

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()


# --- iceoryx2: zero-copy shared-memory pub/sub with an event for the wake-up ----------------------------


def iceoryx2_missing() -> str | None:
    return None if importlib.util.find_spec("iceoryx2") else "iceoryx2 is not installed (pip extra 'bench')"


_IOX2_BUFFER = 16


class _Iceoryx2Ports:
    """The service, its port and the event used to wake the reader (iceoryx2 subscribers only poll)."""

    def __init__(self, service_name: str) -> None:
        import iceoryx2 as iox2

        self.iox2 = iox2
        self.node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        self.service = (
            self.node.service_builder(iox2.ServiceName.new(service_name))
            .publish_subscribe(iox2.Slice[ctypes.c_uint8])
            # The default buffer of 2 with safe overflow would silently drop frames of the throughput window.
            .subscriber_max_buffer_size(_IOX2_BUFFER)
            .open_or_create()
        )
        self.event = (
            self.node.service_builder(iox2.ServiceName.new(service_name + "/wake")).event().open_or_create()
        )


class Iceoryx2Writer(WriterSide):
    def __init__(self, spec: TransportSpec) -> None:
        self._spec = spec
        self._nbytes = int(np.prod(spec.resolution.shape))
        self._ports: _Iceoryx2Ports | None = None
        self._publisher: Any = None
        self._notifier: Any = None

    async def open(self) -> None:
        self._ports = _Iceoryx2Ports(self._spec.service_name)
        self._publisher = (
            self._ports.service.publisher_builder().initial_max_slice_len(_T0.size + self._nbytes).create()
        )
        self._notifier = self._ports.event.notifier_builder().create()

    def _send(self, t0_or_frame: Frame | None) -> None:
        size = _T0.size + (self._nbytes if t0_or_frame is not None else 0)
        # Subscribers that appeared since the last send are connected only on request.
        self._publisher.update_connections()
        sample = self._publisher.loan_slice_uninit(size)
        memory = (ctypes.c_uint8 * size).from_address(sample.payload_ptr)
        if t0_or_frame is not None:
            pixels = np.frombuffer(memoryview(memory), dtype=np.uint8, offset=_T0.size).reshape(
                self._spec.resolution.shape
            )
            np.copyto(pixels, t0_or_frame)  # written straight into the loaned shared-memory sample
            _T0.pack_into(memory, 0, time.time_ns())
        else:
            _T0.pack_into(memory, 0, STOP_T0)
        sample.assume_init().send()
        self._notifier.notify()

    async def send(self, source: Frame, sequence: int) -> None:
        self._send(source)

    async def send_stop(self) -> None:
        self._send(None)


class Iceoryx2Reader(ReaderSide):
    def __init__(self, spec: TransportSpec) -> None:
        self._spec = spec
        self._ports: _Iceoryx2Ports | None = None
        self._subscriber: Any = None
        self._listener: Any = None
        self._sample: Any = None

    async def open(self) -> None:
        self._ports = _Iceoryx2Ports(self._spec.service_name)
        self._subscriber = self._ports.service.subscriber_builder().buffer_size(_IOX2_BUFFER).create()
        self._listener = self._ports.event.listener_builder().create()

    async def receive(self) -> tuple[int, Frame | None]:
        while True:
            sample = self._subscriber.receive()
            if sample is not None:
                break
            assert self._ports is not None
            # Short waits: a notifier created before this listener does not always reach it.
            self._listener.timed_wait(self._ports.iox2.Duration.from_millis(1))
        self._sample = sample  # keeps the shared-memory sample loaned while the view is used
        size = sample.payload().len()
        memory = (ctypes.c_uint8 * size).from_address(sample.payload_ptr)
        (t0,) = _T0.unpack_from(memory, 0)
        if t0 == STOP_T0:
            return STOP_T0, None
        return int(t0), np.frombuffer(memory, dtype=np.uint8, offset=_T0.size).reshape(
            self._spec.resolution.shape
        )

    def release(self) -> bool:
        self._sample = None
        return True


ReaderFactory = Callable[[TransportSpec, Any], ReaderSide]
WriterFactory = Callable[[TransportSpec, Any], WriterSide]


@dataclass(frozen=True)
class Transport:
    name: str
    make_writer: WriterFactory
    make_reader: ReaderFactory
    missing: Callable[[], str | None] = lambda: None
    # A side channel the suite creates for the pair: "queue" (multiprocessing.Queue) or "pipe" (one-way
    # multiprocessing.Pipe: the writer gets the sending end, the reader the receiving end).
    side_channel: str = ""


def transports() -> list[Transport]:
    return [
        Transport("shmring+nats", lambda s, _: RingNatsWriter(s), lambda s, _: RingNatsReader(s)),
        Transport("shmring", RingPipeWriter, RingPipeReader, side_channel="pipe"),
        Transport("mp.queue", QueueWriter, lambda s, q: QueueReader(q), side_channel="queue"),
        Transport("nats-payload", lambda s, _: NatsPayloadWriter(s), lambda s, _: NatsPayloadReader(s)),
        Transport(
            "iceoryx2",
            lambda s, _: Iceoryx2Writer(s),
            lambda s, _: Iceoryx2Reader(s),
            missing=iceoryx2_missing,
        ),
        # Not a frame transport: the bare two-hop wake-up through nats-server, for comparison.
        Transport("nats-floor", lambda s, _: FloorWriter(s.nats_url), lambda s, _: FloorReader(s.nats_url)),
    ]


def by_name(name: str) -> Transport:
    for transport in transports():
        if transport.name == name:
            return transport
    raise KeyError(name)
