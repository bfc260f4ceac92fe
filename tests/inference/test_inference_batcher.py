"""Batching policy: freshest frame per channel, max batch, max wait, staleness, no starvation."""

from __future__ import annotations

import asyncio
import time

from vap_inference.batcher import AsyncBatcher, Batcher

MS = 1_000_000


def test_freshest_frame_per_channel_wins_and_keeps_its_place() -> None:
    b: Batcher[str] = Batcher(max_batch=8, max_wait_ms=10, stale_after_ms=1000)
    assert not b.add("a", "a1", now_ns=0)
    assert not b.add("b", "b1", now_ns=1 * MS)
    assert b.add("a", "a2", now_ns=2 * MS)  # replaces a1
    assert b.stats.superseded == 1 and len(b) == 2
    # max_wait counts from when channel a started waiting (t=0), not from a2's arrival.
    assert b.ready_at_ns() == 10 * MS
    batch, stale = b.take(now_ns=10 * MS, wall_ns=0)
    assert [p.item for p in batch] == ["a2", "b1"] and not stale
    assert batch[0].arrival_ns == 2 * MS  # queue wait is measured from the frame's own arrival


def test_ready_when_full_or_after_max_wait() -> None:
    b: Batcher[int] = Batcher(max_batch=3, max_wait_ms=5, stale_after_ms=1000)
    assert b.ready_at_ns() is None
    b.add("a", 1, now_ns=100 * MS)
    b.add("b", 2, now_ns=101 * MS)
    assert b.ready_at_ns() == 105 * MS
    b.add("c", 3, now_ns=102 * MS)
    assert b.ready_at_ns() == 0  # full: ready now
    one: Batcher[int] = Batcher(max_batch=1, max_wait_ms=50, stale_after_ms=1000)
    one.add("a", 1, now_ns=7 * MS)
    assert one.ready_at_ns() == 0, "a model that runs frame by frame never waits"


def test_oldest_channels_first_and_batch_size_cap() -> None:
    b: Batcher[str] = Batcher(max_batch=2, max_wait_ms=0, stale_after_ms=1000)
    for i, ch in enumerate("abcde"):
        b.add(ch, ch, now_ns=i * MS)
    seen = []
    while len(b):
        batch, _ = b.take(now_ns=10 * MS, wall_ns=0)
        assert len(batch) <= 2
        seen += [p.item for p in batch]
        b.add("a", "a-again", now_ns=11 * MS)  # a busy channel cannot overtake the waiting ones
        if len(seen) >= 5:
            break
    assert seen[:5] == ["a", "b", "c", "d", "e"]


def test_stale_frames_are_dropped_and_counted() -> None:
    b: Batcher[str] = Batcher(max_batch=8, max_wait_ms=0, stale_after_ms=100)
    wall = 10_000 * MS
    b.add("old", "old", now_ns=0, capture_wall_ns=wall - 500 * MS)  # captured 500 ms ago
    b.add("fresh", "fresh", now_ns=0, capture_wall_ns=wall - 20 * MS)
    b.add("nocapture", "nocapture", now_ns=0)  # no capture time: age from arrival
    batch, stale = b.take(now_ns=50 * MS, wall_ns=wall)
    assert [p.item for p in batch] == ["fresh", "nocapture"]
    assert [p.item for p in stale] == ["old"] and b.stats.stale == 1
    b.add("late", "late", now_ns=0)
    batch, stale = b.take(now_ns=200 * MS, wall_ns=wall)
    assert not batch and [p.item for p in stale] == ["late"]


async def test_async_batcher_waits_for_max_wait_or_a_full_batch() -> None:
    b: AsyncBatcher[int] = AsyncBatcher(max_batch=3, max_wait_ms=60, stale_after_ms=5000)
    started = time.monotonic()
    task = asyncio.create_task(b.next_batch())
    await asyncio.sleep(0.005)
    b.add("a", 1)
    batch, _ = await asyncio.wait_for(task, 10)
    waited = time.monotonic() - started
    assert [p.item for p in batch] == [1] and waited >= 0.055

    task = asyncio.create_task(b.next_batch())
    started = time.monotonic()
    for i, ch in enumerate("xyz"):
        b.add(ch, i)
    batch, _ = await asyncio.wait_for(task, 10)
    assert len(batch) == 3 and time.monotonic() - started < 0.05, "a full batch must not wait"
