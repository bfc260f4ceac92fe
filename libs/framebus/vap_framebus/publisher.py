"""FramePublisher: a synchronous NATS publisher for the decoders' per-frame FrameRef messages.

Why not nats-py here: its ``publish()`` is a coroutine that appends to a pending buffer which a separate
flusher task writes out later; on a 2-core host that hop (plus the event loop's own latency) measured
0.2-0.45 ms one-way p50 where a raw socket does 0.10 ms. Decoder loops are synchronous code anyway.

What it does: ``publish()`` writes ``PUB <subject> <n>\\r\\n<payload>\\r\\n`` with one ``sendall``/
``sendmsg`` call on a TCP_NODELAY socket, under a lock (any thread may publish). A daemon thread reads the
socket: it answers the server's PINGs, pings an idle server itself to detect dead connections, logs -ERR,
and on EOF or error reconnects with exponential backoff and jitter, trying the URLs in order.

TLS (a ``tls`` context, a tls:// URL or a server that requires it): the socket is upgraded after the
server's INFO, as NATS does. OpenSSL must never read and write one connection at once, so with TLS the
reader thread waits for data with ``select`` and reads under the writers' lock (it reads only PONGs and
PINGs: rare); each publish is one ``sendall`` of header and payload joined (no ``sendmsg`` on TLS).

What it deliberately does not do: queue anything while disconnected (live video: a frame that cannot be
sent now is dropped and counted, ``publish()`` returns False at once), block a writer for long (a send
that stalls for ``write_timeout`` drops the connection), subscribe, request/reply, headers, JetStream.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import struct
import threading
from collections import deque
from types import TracebackType
from typing import Any, Self

from vap_common.backoff import Backoff
from vap_common.nats_auth import NatsAuth, refusal_message
from vap_framebus.errors import (
    AuthorizationError,
    FrameBusConnectionError,
    FrameBusError,
    PayloadTooLargeError,
    ProtocolError,
)
from vap_framebus.protocol import (
    CRLF,
    PING,
    PONG,
    Parser,
    ServerErrorLog,
    connect_command,
    is_auth_error,
    pub_prefix,
    validate_subject,
)
from vap_framebus.url import ServerAddress, parse_servers
from vap_framebus.version import __version__

_log = logging.getLogger("vap_framebus.publisher")

_RECV_SIZE = 256 * 1024
# Payloads up to this size are concatenated with their header into one buffer (one small copy, one send);
# larger ones go out with sendmsg() and a scatter list (no copy).
_CONCAT_LIMIT = 64 * 1024
_PREFIX_CACHE_SIZE = 1024
DEFAULT_MAX_PAYLOAD = 1024 * 1024  # until the server's INFO says otherwise


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1e6))


class _Waiter:
    __slots__ = ("event", "ok")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ok = False

    def done(self, ok: bool) -> None:
        self.ok = ok
        self.event.set()


class _Handshake:
    """Collects the server's answers while a connection is being set up (a blocking read loop)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.info: dict[str, Any] | None = None
        self.pong = False
        self.error = ""

    def on_msg(self, subject: str, sid: int, reply: str, payload: bytes) -> None:
        pass

    def on_ping(self) -> None:
        self.sock.sendall(PONG)

    def on_pong(self) -> None:
        self.pong = True

    def on_info(self, info: dict[str, Any]) -> None:
        self.info = info

    def on_ok(self) -> None:
        pass

    def on_err(self, message: str) -> None:
        self.error = self.error or message

    def check(self, server: ServerAddress) -> None:
        """Raise if the server sent -ERR."""
        if self.error and is_auth_error(self.error):
            raise AuthorizationError(
                refusal_message(server.user, self.error, token=bool(server.token), where=str(server))
            )
        if self.error:
            raise FrameBusConnectionError(f"{server}: server error during connect: {self.error}")


def open_connection(
    server: ServerAddress,
    *,
    name: str,
    timeout: float,
    recv_size: int = _RECV_SIZE,
    tls: ssl.SSLContext | None = None,
) -> tuple[socket.socket, Parser, dict[str, Any]]:
    """TCP connect, INFO, (TLS handshake when ``tls`` is given, the URL says tls:// or the server requires
    it), CONNECT, PING, PONG. Returns the socket (blocking, no timeout; an ``ssl.SSLSocket`` with TLS), the
    parser holding any bytes read past the PONG, and the server's INFO."""
    sock = socket.create_connection((server.host, server.port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        hs = _Handshake(sock)
        parser = Parser(hs)
        sent_connect = False
        while not hs.pong:
            hs.check(server)
            if hs.info is not None and not sent_connect:
                if tls is not None or server.tls or hs.info.get("tls_required"):
                    sock = (tls or ssl.create_default_context()).wrap_socket(
                        sock, server_hostname=server.host
                    )
                    hs.sock = sock
                command = connect_command(
                    name=name,
                    version=__version__,
                    user=server.user,
                    password=server.password,
                    token=server.token,
                    headers=bool(hs.info.get("headers", False)),
                )
                sock.sendall(command + PING)
                sent_connect = True
            data = sock.recv(recv_size)
            if not data:
                hs.check(server)
                raise FrameBusConnectionError(f"{server}: server closed the connection during connect")
            parser.feed(data)
        hs.check(server)  # e.g. -ERR in the same read as the PONG
        assert hs.info is not None
        sock.settimeout(None)
        return sock, parser, hs.info
    except BaseException:
        sock.close()
        raise


class FramePublisher:
    """Publishes small messages (FrameRefs) with one syscall each; see the module docstring."""

    def __init__(
        self,
        *,
        connect_timeout: float = 2.0,
        write_timeout: float = 0.5,
        reconnect_wait: float = 0.2,
        reconnect_wait_max: float = 2.0,
        ping_interval: float = 5.0,
        max_outstanding_pings: int = 2,
    ) -> None:
        if not 0 < reconnect_wait <= reconnect_wait_max:
            raise ValueError("need 0 < reconnect_wait <= reconnect_wait_max")
        self.connect_timeout = connect_timeout
        self.write_timeout = write_timeout
        self.reconnect_wait = reconnect_wait
        self.reconnect_wait_max = reconnect_wait_max
        self.ping_interval = ping_interval
        self.max_outstanding_pings = max_outstanding_pings
        self.name = "vap-framebus"
        self.published = 0
        self.dropped = 0
        self.reconnects = 0
        self.server_info: dict[str, Any] = {}
        self.last_error = ""
        self._servers: list[ServerAddress] = []
        self._sock: socket.socket | None = None
        self._max_payload = DEFAULT_MAX_PAYLOAD
        self._lock = threading.Lock()  # socket writes, counters, _sock changes
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._waiters: deque[_Waiter | None] = deque()  # one per PING sent; None for keep-alive pings
        self._outstanding_pings = 0
        self._prefixes: dict[str, bytes] = {}
        self._errors = ServerErrorLog(_log, "publisher")
        self._tls: ssl.SSLContext | None = None

    # --- public API -----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def max_payload(self) -> int:
        return self._max_payload

    def connect(self, url: str, name: str = "vap-framebus", *, auth: NatsAuth | None = None) -> None:
        """Connect to the first reachable server of ``url`` (comma-separated list) as ``auth`` (default: the
        URL's user info; its ``tls``: TLS with that CA and client certificate) or raise
        FrameBusConnectionError (AuthorizationError for refused credentials); start the reader thread."""
        if self._thread is not None:
            raise FrameBusError("FramePublisher.connect() called twice")
        auth = auth or NatsAuth()
        self._servers = parse_servers(url, user=auth.user, password=auth.password)
        self._tls = auth.tls.context() if auth.tls is not None else None
        self.name = name
        sock, parser = self._connect_any(raise_errors=True)
        assert sock is not None and parser is not None
        self._thread = threading.Thread(
            target=self._run, args=(sock, parser), name=f"framebus-pub-{name}", daemon=True
        )
        self._thread.start()

    def publish(self, subject: str, payload: bytes | bytearray | memoryview) -> bool:
        """Send one message now. True when written to the socket; False (and ``dropped`` += 1) when
        disconnected or the write failed. Raises ValueError for an invalid subject and
        PayloadTooLargeError above the server's max_payload."""
        prefix = self._prefixes.get(subject)
        if prefix is None:
            prefix = self._prefix(subject)
        size = payload.nbytes if isinstance(payload, memoryview) else len(payload)
        if size > self._max_payload:
            raise PayloadTooLargeError(
                f"payload of {size} bytes exceeds the server's max_payload of {self._max_payload} bytes"
            )
        with self._lock:
            sock = self._sock
            if sock is None:
                self.dropped += 1
                return False
            try:
                if size <= _CONCAT_LIMIT or isinstance(sock, ssl.SSLSocket):
                    sock.sendall(b"".join((prefix, b"%d\r\n" % size, payload, CRLF)))
                else:
                    self._sendmsg_all(sock, [prefix + b"%d\r\n" % size, payload, CRLF])
            except OSError as exc:
                self._disconnect_locked(sock, f"write failed: {exc!r}")
                self.dropped += 1
                return False
            self.published += 1
            return True

    def flush(self, timeout: float = 2.0) -> bool:
        """PING the server and wait for its PONG: True once everything published before was received by
        the server; False when disconnected or no PONG came within ``timeout``."""
        waiter = _Waiter()
        if not self._send_ping(waiter):
            return False
        waiter.event.wait(timeout)
        return waiter.ok

    def close(self) -> None:
        """Stop the reader thread and close the connection. Publishing afterwards drops."""
        self._closed.set()
        with self._lock:
            sock, self._sock = self._sock, None
            self._fail_waiters_locked()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        if sock is not None:
            sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- writing ----------------------------------------------------------------------------------------

    def _prefix(self, subject: str) -> bytes:
        validate_subject(subject)
        if len(self._prefixes) >= _PREFIX_CACHE_SIZE:
            self._prefixes.clear()
        prefix = self._prefixes[subject] = pub_prefix(subject)
        return prefix

    @staticmethod
    def _sendmsg_all(sock: socket.socket, buffers: list[bytes | bytearray | memoryview]) -> None:
        views = [memoryview(b).cast("B") for b in buffers]
        while views:
            sent = sock.sendmsg(views)
            while views and sent >= views[0].nbytes:
                sent -= views[0].nbytes
                views.pop(0)
            if views and sent:
                views[0] = views[0][sent:]

    def _send_ping(self, waiter: _Waiter | None) -> bool:
        with self._lock:
            sock = self._sock
            if sock is None:
                return False
            self._waiters.append(waiter)
            try:
                sock.sendall(PING)
            except OSError as exc:
                self._disconnect_locked(sock, f"write failed: {exc!r}")
                return False
            return True

    def _disconnect_locked(self, sock: socket.socket, reason: str) -> None:
        """Called with the lock held: forget ``sock``; the reader thread notices and reconnects."""
        if self._sock is not sock:
            return
        self._sock = None
        self._fail_waiters_locked()
        if not self._closed.is_set():
            _log.warning("framebus publisher %s: disconnected: %s", self.name, reason)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the reader thread's recv()

    def _fail_waiters_locked(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter is not None:
                waiter.done(False)

    # --- connecting -------------------------------------------------------------------------------------

    def _connect_any(self, *, raise_errors: bool) -> tuple[socket.socket | None, Parser | None]:
        errors: list[str] = []
        auth: AuthorizationError | None = None
        for server in self._servers:
            try:
                sock, parser, info = open_connection(
                    server, name=self.name, timeout=self.connect_timeout, tls=self._tls
                )
            except AuthorizationError as exc:
                auth = auth or exc
                errors.append(str(exc))
                continue
            except (OSError, FrameBusError) as exc:
                errors.append(f"{server}: {exc}")
                continue
            if isinstance(sock, ssl.SSLSocket):
                sock.settimeout(self.write_timeout)  # reads wait in select(): see _recv
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(self.write_timeout))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(self.ping_interval))
            parser.handler = self
            with self._lock:
                self.server_info = info
                self._max_payload = int(info.get("max_payload", DEFAULT_MAX_PAYLOAD))
                self._outstanding_pings = 0
                self._sock = sock
            return sock, parser
        self.last_error = "; ".join(errors)
        if raise_errors:
            if auth is not None:
                raise auth
            raise FrameBusConnectionError(f"could not connect to NATS: {self.last_error}")
        return None, None

    def _reconnect(self) -> tuple[socket.socket | None, Parser | None]:
        backoff = Backoff(self.reconnect_wait, self.reconnect_wait_max)
        while not self._closed.is_set():
            if self._closed.wait(backoff.next_delay()):
                break
            attempt = backoff.attempt
            sock, parser = self._connect_any(raise_errors=False)
            if sock is not None:
                self.reconnects += 1
                _log.info("framebus publisher %s: reconnected after %d attempt(s)", self.name, attempt)
                return sock, parser
            if attempt == 1 or attempt % 10 == 0:
                _log.warning("framebus publisher %s: reconnect failed: %s", self.name, self.last_error)
        return None, None

    # --- the reader thread ------------------------------------------------------------------------------

    def _run(self, sock: socket.socket | None, parser: Parser | None) -> None:
        while sock is not None and parser is not None and not self._closed.is_set():
            self._read_until_lost(sock, parser)
            with self._lock:
                self._disconnect_locked(sock, "connection lost")
            sock.close()
            if self._closed.is_set():
                break
            sock, parser = self._reconnect()

    def _read_until_lost(self, sock: socket.socket, parser: Parser) -> None:
        while self._sock is sock:
            try:
                data = self._recv(sock)
            except BlockingIOError:  # the server was silent for ping_interval
                if self._outstanding_pings >= self.max_outstanding_pings:
                    self.last_error = "server did not answer PINGs"
                    return
                self._outstanding_pings += 1
                self._send_ping(None)
                continue
            except OSError as exc:
                if not self._closed.is_set():
                    self.last_error = f"read failed: {exc!r}"
                return
            if not data:
                self.last_error = self.last_error or "server closed the connection"
                return
            self._outstanding_pings = 0
            try:
                parser.feed(data)
            except ProtocolError as exc:
                self.last_error = str(exc)
                _log.error("framebus publisher %s: %s", self.name, exc)
                return

    def _recv(self, sock: socket.socket) -> bytes:
        """One read; BlockingIOError when the server was silent for ``ping_interval`` (SO_RCVTIMEO on plain
        TCP). With TLS the read itself runs under the writers' lock, after ``select`` said there is data."""
        if not isinstance(sock, ssl.SSLSocket):
            return sock.recv(_RECV_SIZE)
        while True:
            if not sock.pending() and not select.select([sock], [], [], self.ping_interval)[0]:
                raise BlockingIOError
            with self._lock:
                if self._sock is not sock:
                    return b""  # closed or dropped meanwhile
                try:
                    return sock.recv(_RECV_SIZE)
                except (ssl.SSLWantReadError, TimeoutError):
                    continue  # only part of a TLS record so far

    # ParserHandler callbacks (reader thread)

    def on_msg(self, subject: str, sid: int, reply: str, payload: bytes) -> None:
        pass  # a publisher has no subscriptions

    def on_ping(self) -> None:
        with self._lock:
            sock = self._sock
            if sock is not None:
                try:
                    sock.sendall(PONG)
                except OSError as exc:
                    self._disconnect_locked(sock, f"write failed: {exc!r}")

    def on_pong(self) -> None:
        try:
            waiter = self._waiters.popleft()
        except IndexError:
            return
        if waiter is not None:
            waiter.done(True)

    def on_info(self, info: dict[str, Any]) -> None:
        self.server_info = info
        self._max_payload = int(info.get("max_payload", self._max_payload))

    def on_ok(self) -> None:
        pass

    def on_err(self, message: str) -> None:
        self.last_error = message
        self._errors(self.name, message)
