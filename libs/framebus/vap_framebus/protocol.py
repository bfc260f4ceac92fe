"""NATS client protocol: an incremental parser for what the server sends, and the commands a client sends.

The parser is the receive hot path of the frame bus. It keeps one ``bytearray`` of unparsed input, finds
control lines with ``find(b"\\r\\n")``, splits them with ``bytes.split`` (no regular expressions) and
copies each payload exactly once into the ``bytes`` handed to the callback. When a read holds whole
messages only (the common case for ~100-byte FrameRefs) nothing is buffered at all.

Handled: INFO, MSG, HMSG (headers skipped: the callback gets the payload only), PING, PONG, +OK, -ERR.
Not handled: anything JetStream or request/reply specific; that is nats-py's job.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from vap_common.logs import Throttle
from vap_framebus.errors import ProtocolError

CRLF = b"\r\n"
PING = b"PING\r\n"
PONG = b"PONG\r\n"
# A control line longer than this without CRLF is garbage, not a slow server (INFO with a long
# connect_urls list is the longest legitimate line).
MAX_CONTROL_LINE = 64 * 1024
_SUBJECT_CACHE_SIZE = 4096


class ParserHandler(Protocol):
    """What the parser calls. ``on_msg`` runs inline for every message: keep it cheap."""

    def on_msg(self, subject: str, sid: int, reply: str, payload: bytes) -> None: ...
    def on_ping(self) -> None: ...
    def on_pong(self) -> None: ...
    def on_info(self, info: dict[str, Any]) -> None: ...
    def on_ok(self) -> None: ...
    def on_err(self, message: str) -> None: ...


class Parser:
    """Feed it the bytes read from the socket, in order and split anywhere; it calls the handler."""

    __slots__ = ("_buf", "_need", "_pending", "_subjects", "handler")

    def __init__(self, handler: ParserHandler) -> None:
        self.handler = handler
        self._buf = bytearray()
        # While a payload is awaited: its size including headers, and (subject, sid, reply, header size).
        self._need = -1
        self._pending: tuple[str, int, str, int] = ("", 0, "", 0)
        self._subjects: dict[bytes, str] = {}

    def reset(self) -> None:
        """Forget partial input (a new connection starts a new stream)."""
        self._buf.clear()
        self._need = -1

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        buf = self._buf
        src: bytes | bytearray
        if buf:
            buf += data
            src = buf
        else:
            src = data if isinstance(data, bytes) else bytes(data)
        pos = self._parse(src)
        if src is buf:
            if pos >= len(buf):
                buf.clear()
            elif pos:
                del buf[:pos]  # O(1) in CPython: the bytearray moves its start
        elif pos < len(src):
            buf += memoryview(src)[pos:]

    def _parse(self, src: bytes | bytearray) -> int:
        """Parse as much of ``src`` as is complete; return the offset of the first unparsed byte."""
        handler = self.handler
        end = len(src)
        pos = 0
        while pos < end:
            need = self._need
            if need >= 0:
                stop = pos + need
                if stop + 2 > end:
                    return pos
                if src[stop : stop + 2] != CRLF:
                    raise ProtocolError("message payload not followed by CRLF")
                subject, sid, reply, header_size = self._pending
                payload = bytes(src[pos + header_size : stop]) if header_size else bytes(src[pos:stop])
                self._need = -1
                pos = stop + 2
                handler.on_msg(subject, sid, reply, payload)
                continue
            eol = src.find(CRLF, pos)
            if eol < 0:
                if end - pos > MAX_CONTROL_LINE:
                    raise ProtocolError(f"control line longer than {MAX_CONTROL_LINE} bytes")
                return pos
            line = src[pos:eol]
            pos = eol + 2
            self._control(line, handler)
        return pos

    def _control(self, line: bytes | bytearray, handler: ParserHandler) -> None:
        head = line[:4]
        if head == b"MSG " or head.upper() == b"MSG ":
            self._msg_line(line)
        elif head == b"PING" or head.upper() == b"PING":
            handler.on_ping()
        elif head == b"PONG" or head.upper() == b"PONG":
            handler.on_pong()
        elif head == b"HMSG" or head.upper() == b"HMSG":
            self._hmsg_line(line)
        elif head == b"+OK" or head.upper() == b"+OK":
            handler.on_ok()
        elif head == b"-ERR" or head.upper() == b"-ERR":
            handler.on_err(bytes(line[4:]).decode("utf-8", "replace").strip().strip("'"))
        elif head == b"INFO" or head.upper() == b"INFO":
            try:
                info = json.loads(bytes(line[4:]))
            except ValueError as exc:
                raise ProtocolError(f"INFO is not JSON: {bytes(line[:200])!r}") from exc
            if not isinstance(info, dict):
                raise ProtocolError("INFO is not a JSON object")
            handler.on_info(info)
        elif line:
            raise ProtocolError(f"unknown protocol line {bytes(line[:80])!r}")

    def _subject(self, raw: bytes | bytearray) -> str:
        subjects = self._subjects
        key = raw if isinstance(raw, bytes) else bytes(raw)
        subject = subjects.get(key)
        if subject is None:
            if len(subjects) >= _SUBJECT_CACHE_SIZE:
                subjects.clear()  # wildcard subscriptions over many subjects: stay bounded
            subject = subjects[key] = key.decode("utf-8", "replace")
        return subject

    def _msg_line(self, line: bytes | bytearray) -> None:
        # MSG <subject> <sid> [reply-to] <#bytes>
        args = line.split()
        try:
            if len(args) == 4:
                _, subject, sid, size = args
                reply = ""
            elif len(args) == 5:
                _, subject, sid, raw_reply, size = args
                reply = bytes(raw_reply).decode("utf-8", "replace")
            else:
                raise ValueError
            self._pending = (self._subject(subject), int(sid), reply, 0)
            self._need = int(size)
        except ValueError:
            raise ProtocolError(f"bad MSG line {bytes(line[:200])!r}") from None
        if self._need < 0:
            raise ProtocolError(f"bad MSG line {bytes(line[:200])!r}")

    def _hmsg_line(self, line: bytes | bytearray) -> None:
        # HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>
        args = line.split()
        try:
            if len(args) == 5:
                _, subject, sid, header_size, size = args
                reply = ""
            elif len(args) == 6:
                _, subject, sid, raw_reply, header_size, size = args
                reply = bytes(raw_reply).decode("utf-8", "replace")
            else:
                raise ValueError
            headers = int(header_size)
            total = int(size)
            self._pending = (self._subject(subject), int(sid), reply, headers)
        except ValueError:
            raise ProtocolError(f"bad HMSG line {bytes(line[:200])!r}") from None
        if not 0 <= headers <= total:
            raise ProtocolError(f"bad HMSG line {bytes(line[:200])!r}")
        self._need = total


# --- commands -------------------------------------------------------------------------------------------


def validate_subject(subject: str, *, wildcards: bool = False) -> None:
    """Raise ValueError unless ``subject`` is a valid NATS subject (``wildcards``: a subscription's)."""
    if not isinstance(subject, str) or not subject:
        raise ValueError(f"invalid NATS subject {subject!r}: empty")
    if any(c.isspace() for c in subject):
        raise ValueError(f"invalid NATS subject {subject!r}: contains whitespace")
    parts = subject.split(".")
    for index, part in enumerate(parts):
        if not part:
            raise ValueError(f"invalid NATS subject {subject!r}: empty token")
        if ("*" in part or ">" in part) and (
            not wildcards or part not in ("*", ">") or (part == ">" and index != len(parts) - 1)
        ):
            what = "wildcards are allowed in subscriptions only" if not wildcards else "misplaced wildcard"
            raise ValueError(f"invalid NATS subject {subject!r}: {what}")


def validate_queue(queue: str) -> None:
    if queue and any(c.isspace() for c in queue):
        raise ValueError(f"invalid queue group {queue!r}: contains whitespace")


def connect_command(
    *,
    name: str,
    version: str,
    user: str = "",
    password: str = "",
    token: str = "",
    headers: bool = True,
) -> bytes:
    options: dict[str, Any] = {
        "verbose": False,
        "pedantic": False,
        "name": name,
        "lang": "python",
        "version": version,
        "protocol": 1,
        "headers": headers,
        "no_responders": headers,
    }
    if user:
        options["user"] = user
        options["pass"] = password
    if token:
        options["auth_token"] = token
    return b"CONNECT " + json.dumps(options, separators=(",", ":")).encode() + CRLF


def pub_prefix(subject: str) -> bytes:
    """``b"PUB <subject> "``; the publisher caches it per subject and appends ``b"%d\\r\\n" % size``."""
    return b"PUB " + subject.encode() + b" "


def sub_command(subject: str, sid: int, queue: str = "") -> bytes:
    if queue:
        return f"SUB {subject} {queue} {sid}\r\n".encode()
    return f"SUB {subject} {sid}\r\n".encode()


def unsub_command(sid: int) -> bytes:
    return f"UNSUB {sid}\r\n".encode()


def is_auth_error(message: str) -> bool:
    """-ERR for refused credentials ('Authorization Violation'), not for a refused subject."""
    lowered = message.lower()
    return not is_permissions_error(message) and ("authorization" in lowered or "authentication" in lowered)


def is_permissions_error(message: str) -> bool:
    """-ERR 'Permissions Violation for Publish to "<subject>"' (or Subscription): the connection stays."""
    return "permissions violation" in message.lower()


class ServerErrorLog:
    """Logs the server's -ERR lines of one connection. A refused subject is logged once per minute per
    subject: a publisher refused on every frame would flood the log otherwise."""

    def __init__(self, logger: logging.Logger, what: str, interval_s: float = 60.0) -> None:
        self._logger = logger
        self._what = what
        self._throttle = Throttle(interval_s)

    def __call__(self, name: str, message: str) -> None:
        if is_permissions_error(message):
            if self._throttle.due(message):
                self._logger.error("framebus %s %s: the server refused: %s", self._what, name, message)
        elif is_auth_error(message):
            self._logger.error(
                "framebus %s %s: server refused the credentials: %s", self._what, name, message
            )
        else:
            self._logger.error("framebus %s %s: server error: %s", self._what, name, message)
