"""Free ports for listeners come from outside the kernel's ephemeral range, where outbound connections (which
the kernel gives ephemeral ports) cannot take them between the pick and the bind."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vap_common import ports


def test_free_port_is_outside_the_ephemeral_range_and_bindable() -> None:
    low, high = ports.ephemeral_range()
    for _ in range(20):
        port = ports.free_tcp_port()
        assert not low <= port <= high
        assert ports.port_free(port)


def test_a_block_is_consecutive_free_ports() -> None:
    low, high = ports.ephemeral_range()
    base = ports.free_port_block(8)
    assert all(not low <= p <= high and ports.port_free(p) for p in range(base, base + 8))


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        # The busy port is the only candidate: no port rather than that one.
        monkeypatch.setattr(ports, "candidate_bases", lambda count, eph: [range(busy, busy + 1)])
        with pytest.raises(OSError, match="no block of 1 free TCP ports"):
            ports.free_tcp_port()


def test_no_room_outside_the_range_falls_back_to_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (1024, 65535))
    assert ports.port_free(ports.free_port_block(2))


def test_an_unreadable_range_file_means_the_linux_default(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert ports.ephemeral_range(tmp_path / "absent") == ports.LINUX_DEFAULT_EPHEMERAL
    (tmp_path / "range").write_text("40000\t50000\n")
    assert ports.ephemeral_range(tmp_path / "range") == (40000, 50000)


def test_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="count"):
        ports.free_port_block(0)


@given(st.integers(1024, 65535), st.integers(1024, 65535), st.integers(1, 64))
def test_candidate_blocks_never_touch_the_ephemeral_range(a: int, b: int, count: int) -> None:
    low, high = min(a, b), max(a, b)
    for span in ports.candidate_bases(count, (low, high)):
        for base in (span.start, span.stop - 1):
            block = range(base, base + count)
            assert block.stop - 1 <= ports.HIGHEST_PORT and block.start >= ports.LOWEST_PORT
            assert block.stop - 1 < low or block.start > high
