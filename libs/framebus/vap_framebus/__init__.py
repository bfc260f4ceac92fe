"""vap_framebus: a minimal NATS core-protocol client for the per-frame hot path (FrameRef messages).

nats-py stays the client for everything else (JetStream, request/reply, control). On the frame path its
asyncio task hops cost 0.2-0.45 ms one-way p50 on a 2-core host where a raw socket does 0.10 ms, and the
frame-handoff target is 0.2 ms p50 (DESIGN.md). This package gives:

- ``FramePublisher``: synchronous, one syscall per publish, drops (and counts) frames while disconnected,
  a daemon thread for PING/PONG, -ERR and reconnecting;
- ``AsyncFrameSubscriber``: asyncio, handlers called inline from ``data_received`` (must be fast and must
  not block), reconnect with automatic resubscribe.

TCP with or without TLS (upgraded after INFO, as NATS does); no headers on publish, no request/reply, no
JetStream.
"""

from vap_framebus.errors import (
    AuthorizationError,
    FrameBusConnectionError,
    FrameBusError,
    PayloadTooLargeError,
    ProtocolError,
    UnsupportedURLError,
)
from vap_framebus.protocol import Parser, validate_subject
from vap_framebus.publisher import FramePublisher
from vap_framebus.subscriber import AsyncFrameSubscriber, Handler
from vap_framebus.url import ServerAddress, parse_servers
from vap_framebus.version import __version__

__all__ = [
    "AsyncFrameSubscriber",
    "AuthorizationError",
    "FrameBusConnectionError",
    "FrameBusError",
    "FramePublisher",
    "Handler",
    "Parser",
    "PayloadTooLargeError",
    "ProtocolError",
    "ServerAddress",
    "UnsupportedURLError",
    "__version__",
    "parse_servers",
    "validate_subject",
]
