"""Exponential backoff with jitter for every reconnect and restart loop in VAP (decoders, the decoder
agent, the frame bus).

Delay n (n = 0, 1, ...) is drawn uniformly from [d/2, d] with d = min(cap, initial * 2**n): the first retry
comes within ``initial`` (<= 1 s), later ones spread out so that many cameras behind one failed switch do
not all retry in the same instant ("equal jitter"). ``reset()`` after a success.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial: float = 0.5, cap: float = 30.0, *, rng: random.Random | None = None) -> None:
        if initial <= 0 or cap <= 0:
            raise ValueError("backoff delays must be positive")
        self.initial = initial
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def reset(self) -> None:
        self.attempt = 0

    def peek_ceiling(self) -> float:
        """Upper bound of the next delay."""
        return min(self.cap, self.initial * 2.0 ** min(self.attempt, 60))

    def next_delay(self) -> float:
        ceiling = self.peek_ceiling()
        self.attempt += 1
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)
