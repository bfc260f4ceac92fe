"""Batching across channels: the freshest frame per channel wins, batches close at max size or max wait,
frames older than the staleness bound are dropped.

The core (``Batcher``) is synchronous and takes explicit clocks, so its policy is testable without
sleeping; ``AsyncBatcher`` adds the asyncio waiting used by the service. ``add`` is called inline from the
NATS receive path (vap_framebus), so it is O(1) and never blocks.

Policy:
- one pending slot per channel: a newer frame of the same channel replaces the pending one (counted as
  ``superseded``): under load each channel skips frames instead of building a queue of old ones;
- a batch is ready when ``max_batch`` channels have a frame, or when the oldest pending frame has waited
  ``max_wait``; with ``max_batch`` 1 (a model that cannot batch) every frame is ready at once;
- at take time frames older than ``stale_after`` (from the capture time on the frame, else from arrival)
  are dropped (``stale``): a result that late is useless to a live pipeline;
- the oldest pending frames go first, so no channel starves when channels outnumber the batch size.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class Pending(Generic[T]):
    item: T
    channel: str
    arrival_ns: int  # monotonic clock, when this frame arrived
    capture_wall_ns: int  # wall clock (Unix ns) of capture; 0 = unknown
    waiting_since_ns: int  # monotonic clock, when the channel's wait began (earliest replaced frame)


@dataclass
class BatcherStats:
    received: int = 0
    superseded: int = 0
    stale: int = 0
    batches: int = 0
    batched_frames: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Batcher(Generic[T]):
    def __init__(self, *, max_batch: int, max_wait_ms: float, stale_after_ms: float) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.max_batch = max_batch
        self.max_wait_ns = int(max_wait_ms * 1e6)
        self.stale_after_ns = int(stale_after_ms * 1e6)
        # Insertion order = the order in which channels started waiting.
        self._pending: dict[str, Pending[T]] = {}
        self.stats = BatcherStats()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, channel: str, item: T, *, now_ns: int, capture_wall_ns: int = 0) -> bool:
        """Queue ``item`` as the pending frame of ``channel``. True when it replaced an older one."""
        self.stats.received += 1
        old = self._pending.get(channel)
        # The replacement keeps the channel's wait start and place in line (assigning to an existing
        # dict key keeps its position): the channel has been waiting since then, and max_wait must not
        # restart each time a busy channel sends a newer frame.
        since = old.waiting_since_ns if old is not None else now_ns
        self._pending[channel] = Pending(item, channel, now_ns, capture_wall_ns, since)
        if old is not None:
            self.stats.superseded += 1
            return True
        return False

    def ready_at_ns(self) -> int | None:
        """Monotonic time at which a batch is ready (now or in the past when full); None when empty."""
        if not self._pending:
            return None
        if len(self._pending) >= self.max_batch:
            return 0
        oldest = next(iter(self._pending.values()))
        return oldest.waiting_since_ns + self.max_wait_ns

    def take(self, *, now_ns: int, wall_ns: int) -> tuple[list[Pending[T]], list[Pending[T]]]:
        """(batch, stale): up to ``max_batch`` oldest pending frames that are fresh enough, and the frames
        dropped as stale on the way. Call when ready (or to flush)."""
        batch: list[Pending[T]] = []
        stale: list[Pending[T]] = []
        while self._pending and len(batch) < self.max_batch:
            channel = next(iter(self._pending))
            entry = self._pending.pop(channel)
            # Age from the capture (wall clock, set by the decoder on this host), else from arrival.
            age = wall_ns - entry.capture_wall_ns if entry.capture_wall_ns else now_ns - entry.arrival_ns
            (stale if age > self.stale_after_ns else batch).append(entry)
        self.stats.stale += len(stale)
        if batch:
            self.stats.batches += 1
            self.stats.batched_frames += len(batch)
        return batch, stale

    def clear(self) -> list[Pending[T]]:
        dropped = list(self._pending.values())
        self._pending.clear()
        return dropped


class AsyncBatcher(Batcher[T]):
    """Batcher plus ``await next_batch()``. All methods run on one event loop (no locks needed).

    Wake-ups cost CPU per frame on the loop (each one a task step and often a blocking epoll round), so
    the waiting is lean: one caller at a time waits for readiness (the service's other lanes queue on
    ``_turn`` and are woken once, when the batch they wait for was taken, not by every frame), it sleeps
    on a bare future, and ``add`` wakes it only when a batch becomes ready now (full) or arms one timer at
    the max-wait deadline when the first frame comes in; frames that merely join a waiting batch wake
    nobody."""

    def __init__(self, *, max_batch: int, max_wait_ms: float, stale_after_ms: float) -> None:
        super().__init__(max_batch=max_batch, max_wait_ms=max_wait_ms, stale_after_ms=stale_after_ms)
        self._turn = asyncio.Lock()
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def add(self, channel: str, item: T, *, now_ns: int | None = None, capture_wall_ns: int = 0) -> bool:
        now = time.monotonic_ns() if now_ns is None else now_ns
        replaced = super().add(channel, item, now_ns=now, capture_wall_ns=capture_wall_ns)
        if self._waiter is not None and self._timer is None:
            # A waiter without a timer is waiting for a first frame (a replacement or a frame joining a
            # batch under way keeps the deadline, which only the oldest pending frame sets).
            self._arm(now)
        elif self._waiter is not None and len(self._pending) >= self.max_batch:
            self._wake()
        return replaced

    def _arm(self, now_ns: int) -> None:
        ready = self.ready_at_ns()
        if ready is None:
            return
        delay_ns = ready - now_ns
        if delay_ns <= 0:
            self._wake()
        else:
            self._timer = asyncio.get_running_loop().call_later(delay_ns / 1e9, self._wake)

    def _wake(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_batch(self) -> tuple[list[Pending[T]], list[Pending[T]]]:
        """Wait until a batch is ready; returns (batch, stale). The batch may be empty when every pending
        frame was stale. Callers take turns: the first waits for readiness, the others for it to be done."""
        async with self._turn:
            while True:
                now = time.monotonic_ns()
                ready = self.ready_at_ns()
                if ready is not None and ready <= now:
                    return self.take(now_ns=now, wall_ns=time.time_ns())
                self._waiter = waiter = asyncio.get_running_loop().create_future()
                try:
                    # Wakes up when the batch fills (add), else at the deadline: armed here when frames
                    # are already pending, by add() when the first one comes.
                    self._arm(now)
                    await waiter
                finally:
                    self._waiter = None
                    if self._timer is not None:
                        self._timer.cancel()
                        self._timer = None
