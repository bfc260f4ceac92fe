"""``nats-floor``: the machine's floor for any handoff that goes through nats-server.

No frame, no ring, no protobuf, no event loop: the writer publishes an 8-byte t0 with vap_framebus's
synchronous publisher (one ``send`` syscall) and the reader sits in a blocking ``recv`` on a raw NATS
connection, parsing with vap_framebus's parser. What is left is two process wake-ups (writer ->
nats-server -> reader) and the server's routing. ``shmring+nats`` cannot be faster than this row on the same
machine in the same run, so the row tells how much of a missed target is the host's wake-up latency and how
much is VAP's own code.
"""

from __future__ import annotations

import socket
import struct
import time
from collections import deque
from typing import Any

import numpy as np

from bench.handoff.common import STOP_T0, Frame, ReaderSide, WriterSide
from vap_framebus import FramePublisher, parse_servers
from vap_framebus.protocol import PONG, Parser, sub_command
from vap_framebus.publisher import open_connection

SUBJECT = "vap.bench.floor"
_T0 = struct.Struct("<q")
_EMPTY: Frame = np.empty((0, 0, 3), np.uint8)


class FloorWriter(WriterSide):
    def __init__(self, nats_url: str) -> None:
        self._url = nats_url
        self._pub: FramePublisher | None = None

    async def open(self) -> None:
        self._pub = FramePublisher()
        self._pub.connect(self._url, "bench-floor-writer")

    def _publish(self, t0: int) -> None:
        assert self._pub is not None
        if not self._pub.publish(SUBJECT, _T0.pack(t0)):
            raise RuntimeError(f"t0 dropped: {self._pub.last_error}")

    async def send(self, source: Frame, sequence: int) -> None:
        self._publish(time.time_ns())

    async def send_stop(self) -> None:
        self._publish(STOP_T0)
        assert self._pub is not None
        self._pub.flush()

    async def close(self) -> None:
        if self._pub is not None:
            self._pub.close()


class _Inbox:
    """Parser handler: keeps the t0 of every message; answers the server's PINGs."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.t0s: deque[int] = deque()
        self.pongs = 0

    def on_msg(self, subject: str, sid: int, reply: str, payload: bytes) -> None:
        self.t0s.append(_T0.unpack(payload)[0])

    def on_ping(self) -> None:
        self.sock.sendall(PONG)

    def on_pong(self) -> None:
        self.pongs += 1

    def on_info(self, info: dict[str, Any]) -> None:
        pass

    def on_ok(self) -> None:
        pass

    def on_err(self, message: str) -> None:
        raise RuntimeError(f"nats-server: {message}")


class FloorReader(ReaderSide):
    def __init__(self, nats_url: str) -> None:
        self._url = nats_url
        self._sock: socket.socket | None = None
        self._inbox: _Inbox | None = None
        self._parser: Parser | None = None

    async def open(self) -> None:
        (server,) = parse_servers(self._url)[:1]
        sock, parser, _ = open_connection(server, name="bench-floor-reader", timeout=5.0)
        self._sock, self._inbox = sock, _Inbox(sock)
        parser.handler = self._inbox
        self._parser = parser
        # PING after SUB: once its PONG is back the server has the subscription.
        sock.sendall(sub_command(SUBJECT, 1) + b"PING\r\n")
        while not self._inbox.pongs:
            parser.feed(sock.recv(65536))

    async def receive(self) -> tuple[int, Frame | None]:
        assert self._sock is not None and self._inbox is not None and self._parser is not None
        while not self._inbox.t0s:
            data = self._sock.recv(65536)  # blocking on purpose: the cheapest wake-up there is
            if not data:
                raise RuntimeError("nats-server closed the connection")
            self._parser.feed(data)
        t0 = self._inbox.t0s.popleft()
        return (STOP_T0, None) if t0 == STOP_T0 else (t0, _EMPTY)

    async def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
