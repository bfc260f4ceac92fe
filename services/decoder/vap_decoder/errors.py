"""Why a source could not be opened or read, and whether retrying can help.

The channel loop needs one decision per failure: retry with backoff (RECONNECTING) or give up (FAILED).
Every message here is already redacted: FFmpeg quotes the URL it failed on, credentials included.
"""

from __future__ import annotations


class SourceError(Exception):
    """A source failure. ``permanent`` ones (missing file, unsupported scheme or codec) end the channel in
    FAILED at once; the others are retried with backoff."""

    permanent: bool = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidSourceError(SourceError):
    """The SourceSpec itself is unusable (unsupported scheme, malformed URL): no retry can fix it."""

    permanent = True


class PermanentSourceError(SourceError):
    """The source exists but can never be decoded as asked (file missing, not a video, unknown codec)."""

    permanent = True


class TransientSourceError(SourceError):
    """Network trouble, a timeout, a stall, a camera that went away: try again later."""

    permanent = False
