"""AsyncBatcher with several lanes waiting (the service's parallel_batches): every frame goes to exactly one
lane, a lane that stops waiting hands the turn on without losing frames, and a batch is released when it
fills or at its deadline, never by a frame that merely joins it."""

from __future__ import annotations

import asyncio

from vap_inference.batcher import AsyncBatcher


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_each_frame_goes_to_exactly_one_of_two_waiting_lanes() -> None:
    b: AsyncBatcher[str] = AsyncBatcher(max_batch=1, max_wait_ms=0, stale_after_ms=5000)
    lanes = [asyncio.create_task(b.next_batch()) for _ in range(2)]
    await _settle()
    b.add("cam-a", "a1")
    await _settle()
    finished = [t for t in lanes if t.done()]
    assert len(finished) == 1, "one frame, one lane"
    first, _ = finished[0].result()
    assert [p.item for p in first] == ["a1"]
    b.add("cam-b", "b1")
    second, _ = await asyncio.wait_for(next(t for t in lanes if t is not finished[0]), 10)
    assert [p.item for p in second] == ["b1"]
    assert len(b) == 0


async def test_a_cancelled_lane_hands_its_turn_on_and_no_frame_is_lost() -> None:
    b: AsyncBatcher[str] = AsyncBatcher(max_batch=2, max_wait_ms=10_000, stale_after_ms=60_000)
    holder = asyncio.create_task(b.next_batch())
    await _settle()
    other = asyncio.create_task(b.next_batch())
    b.add("cam-a", "a1")  # the holder's batch is waiting for a second channel or the deadline
    await _settle()
    holder.cancel()
    await _settle()
    assert holder.cancelled() and not other.done()
    b.add("cam-b", "b1")  # fills the batch: the lane that took over the turn gets both frames
    batch, stale = await asyncio.wait_for(other, 10)
    assert sorted(p.item for p in batch) == ["a1", "b1"] and not stale


async def test_a_joining_frame_does_not_release_the_batch_early_but_a_full_batch_does() -> None:
    b: AsyncBatcher[str] = AsyncBatcher(max_batch=3, max_wait_ms=10_000, stale_after_ms=60_000)
    lane = asyncio.create_task(b.next_batch())
    await _settle()
    b.add("cam-a", "a1")
    b.add("cam-b", "b1")
    b.add("cam-a", "a2")  # replaces a1: still two channels
    await _settle()
    assert not lane.done()
    b.add("cam-c", "c1")
    batch, _ = await asyncio.wait_for(lane, 10)
    assert [p.item for p in batch] == ["a2", "b1", "c1"], "oldest channel first, freshest frame each"


async def test_frames_pending_before_a_lane_waits_are_released_at_their_deadline() -> None:
    b: AsyncBatcher[str] = AsyncBatcher(max_batch=4, max_wait_ms=30, stale_after_ms=60_000)
    b.add("cam-a", "a1")  # nobody waiting yet: the lane that comes arms the deadline itself
    batch, _ = await asyncio.wait_for(b.next_batch(), 10)
    assert [p.item for p in batch] == ["a1"]
