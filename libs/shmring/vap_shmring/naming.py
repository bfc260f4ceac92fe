"""Deterministic ring names derived from a camera channel id.

``vap-ring-<sanitised channel id>-<12 hex digits of sha256(channel id)>``: readable in ``ls /dev/shm``,
safe as a POSIX shm name (no slash, no leading dot, only ``[A-Za-z0-9._-]``), far below NAME_MAX (255),
and distinct channel ids that sanitise to the same text still get distinct names thanks to the hash.

With a node prefix (several VAP nodes on one machine, e.g. tests or a host running two nodes):
``vap-ring-<sanitised prefix>.<sanitised channel id>-<hash of prefix and channel id>``, so the same channel
decoded by two nodes never shares a name; without one the name is exactly as above.
"""

from __future__ import annotations

import hashlib
import re

SHM_DIR = "/dev/shm"  # noqa: S108 - where Linux (glibc shm_open) keeps POSIX shared-memory objects
RING_PREFIX = "vap-ring-"
# A writer builds its ring under a hidden temporary name and publishes it with link(2), so a ring is
# never visible under its real name before its header is complete.
TMP_PREFIX = ".vap-ring-tmp-"
_MAX_READABLE = 48
_HASH_HEX = 12
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


_MAX_PREFIX = 24


def ring_name(channel_id: str, prefix: str = "") -> str:
    """The shm name (without leading slash) of the ring of ``channel_id`` on the node whose ring-name
    ``prefix`` is given ("" = single node); same input, same name."""
    if not channel_id:
        raise ValueError("channel_id must not be empty")
    readable = _UNSAFE.sub("_", channel_id)[:_MAX_READABLE].strip("._-") or "ch"
    if not prefix:
        digest = hashlib.sha256(channel_id.encode("utf-8")).hexdigest()[:_HASH_HEX]
        return f"{RING_PREFIX}{readable}-{digest}"
    node = _UNSAFE.sub("_", prefix)[:_MAX_PREFIX].strip("._-") or "node"
    # The NUL cannot occur in either part: (prefix, channel) pairs hash apart however they split.
    digest = hashlib.sha256(f"{prefix}\0{channel_id}".encode()).hexdigest()[:_HASH_HEX]
    return f"{RING_PREFIX}{node}.{readable}-{digest}"


def is_ring_name(name: str) -> bool:
    return name.startswith(RING_PREFIX) and "/" not in name
