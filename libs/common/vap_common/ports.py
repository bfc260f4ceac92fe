"""Free TCP ports for listeners whose port must be known before they bind: a service's port written into its
peers' configuration, a server restarted on the same port, a block of metrics ports.

The ports are picked *outside* the kernel's ephemeral range. A port from ``bind(0)`` comes from that range,
and between picking it and the listener binding it any outbound connection on the machine (a NATS client, a
PostgreSQL connection, a gRPC channel) can be handed the same port by the kernel: ``vap up`` starting its
services one after another hit exactly that ("Failed to bind to address 127.0.0.1:33401"). Outside the range
only another process that binds explicitly can collide, so callers still retry on a bind failure.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LINUX_DEFAULT_EPHEMERAL = (32768, 60999)
# Below this are the well-known and commonly configured service ports.
LOWEST_PORT = 10000
HIGHEST_PORT = 65535
# A side of the ephemeral range narrower than this is not worth searching.
MIN_SPAN = 1000
ATTEMPTS = 500


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux default when it cannot be read, e.g. on another OS)."""
    try:
        low, high = (int(v) for v in path.read_text().split())
    except (OSError, ValueError):
        return LINUX_DEFAULT_EPHEMERAL
    return low, high


def candidate_bases(count: int, ephemeral: tuple[int, int]) -> list[range]:
    """Where a block of ``count`` ports may start: below the ephemeral range and above it, where there is
    room."""
    low, high = ephemeral
    spans = [range(LOWEST_PORT, low - count + 1), range(max(high + 1, LOWEST_PORT), HIGHEST_PORT - count + 2)]
    return [span for span in spans if len(span) >= MIN_SPAN]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener could bind ``port`` on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port_block(count: int = 1, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive ports that were all free a moment ago, outside the ephemeral range
    (inside it only when the range leaves no room around it)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    spans = candidate_bases(count, ephemeral_range())
    for _ in range(ATTEMPTS):
        if spans:
            span = spans[secrets.randbelow(len(spans))]
            base = span[secrets.randbelow(len(span))]
        else:  # no room outside: let the kernel pick, as bind(0) would
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                base = int(sock.getsockname()[1])
            if base + count - 1 > HIGHEST_PORT:
                continue
        if all(port_free(port, host) for port in range(base, base + count)):
            return base
    raise OSError(f"no block of {count} free TCP ports on {host} after {ATTEMPTS} tries")


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (see the module docstring for where it comes from)."""
    return free_port_block(1, host)
