"""Remove camera credentials from anything that may reach a log line, an API response or a metric label.

Camera URLs carry credentials (``rtsp://user:secret@cam/stream``); they must never leave the process that
opens the camera. ``redact_url`` hides the user info of one URL, ``redact_text`` every URL in free text
(error messages from FFmpeg quote the URL they failed on).
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit, urlunsplit

REDACTED = "***"

# scheme://userinfo@ where userinfo has no '/', '@' or whitespace: the part of a URL that holds credentials.
_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@ \t\r\n\f\v]+)@")
# Query parameters that carry secrets in HTTP camera URLs (e.g. ?user=admin&password=...).
_SECRET_QUERY_RE = re.compile(r"(?i)(?P<key>[?&](?:password|passwd|pwd|pass|token|key|secret|auth)=)[^&\s#]*")


def redact_text(text: str) -> str:
    """Replace the user info of every URL in ``text`` and secret query values with ``***``."""
    text = _USERINFO_RE.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    return _SECRET_QUERY_RE.sub(lambda m: f"{m['key']}{REDACTED}", text)


def redact_url(url: str) -> str:
    """The URL with its user name and password replaced by ``***``; other parts are kept."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if parts.username is None and parts.password is None:
        return redact_text(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        return redact_text(url)
    netloc = f"{REDACTED}@{host}" + (f":{port}" if port is not None else "")
    return redact_text(urlunsplit(SplitResult(parts.scheme, netloc, parts.path, parts.query, parts.fragment)))


def url_has_credentials(url: str) -> bool:
    return redact_text(url) != url
