"""Opaque page tokens for keyset pagination.

A token carries the sort key of the last item returned and a fingerprint of the request's filters, so a token
used with different filters is refused (INVALID_ARGUMENT on ``page_token``) instead of returning a wrong page.
Tokens are not secret: tampering can only move the cursor within what the caller may read anyway.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from google.protobuf.message import Message

from vap_control.errors import InvalidArgumentError

_VERSION = 1


def fingerprint(request: Message) -> str:
    """Hash of the request without its page_token and page_size (the fields that may change per page)."""
    copy = type(request)()
    copy.CopyFrom(request)
    for name in ("page_token", "page_size"):
        if name in copy.DESCRIPTOR.fields_by_name:
            copy.ClearField(name)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()[:16]


def encode(request: Message, key: list[Any]) -> str:
    raw = json.dumps({"v": _VERSION, "f": fingerprint(request), "k": key}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(request: Message, token: str) -> list[Any] | None:
    """The key of a token made for this request; None for an empty token (first page)."""
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(data, dict) or data.get("v") != _VERSION or not isinstance(data.get("k"), list):
            raise ValueError("bad token structure")
    except ValueError:
        raise InvalidArgumentError("page_token", "not a page token of this API") from None
    if data.get("f") != fingerprint(request):
        raise InvalidArgumentError(
            "page_token", "the other request fields must match the first page's request"
        )
    key: list[Any] = data["k"]
    return key
