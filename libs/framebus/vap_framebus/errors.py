"""The exceptions vap_framebus raises. All derive from FrameBusError."""

from __future__ import annotations

from vap_common.nats_auth import NatsAuthError


class FrameBusError(Exception):
    """Base class of every vap_framebus error."""


class UnsupportedURLError(FrameBusError, ValueError):
    """A server URL this client cannot use (tls://, ws://, a malformed URL)."""


class FrameBusConnectionError(FrameBusError, ConnectionError):
    """No server of the URL list could be connected to (or the handshake failed)."""


class AuthorizationError(FrameBusConnectionError, NatsAuthError):
    """The server refused the credentials (-ERR 'Authorization Violation' or similar). Also a
    ``vap_common.nats_auth.NatsAuthError``, as nats-py connections report it."""


class PayloadTooLargeError(FrameBusError, ValueError):
    """The payload is larger than the server's max_payload (from its INFO)."""


class ProtocolError(FrameBusError):
    """The server sent something that is not NATS client protocol; the connection is dropped."""
