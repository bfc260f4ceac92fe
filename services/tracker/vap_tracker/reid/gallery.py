"""Global identities of one site: appearance prototypes shared by the channels (cameras) of the site.

A confirmed person track gets a global id the first time its embedding arrives: the id of the most similar
identity in the gallery (cosine similarity >= threshold) that is not already worn by another live track of
the *same* channel (one person cannot be two tracks in one view), else a new id. Afterwards the track keeps
its id and refines that identity's prototype (exponential moving average). Identities nobody has updated
for ``ttl_s`` expire, so the gallery stays small and a stranger tomorrow is not matched to someone seen
today.

Scope: one gallery per site in one tracker process (the channels of a site are tracked by the same
process). Thread-safety: used from the service's event loop thread only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


@dataclass(slots=True)
class _Identity:
    feature: F32
    last_seen_s: float
    holders: set[tuple[str, int]] = field(default_factory=set)  # (channel, track id) wearing it now


class SiteGallery:
    def __init__(
        self,
        site_id: str,
        *,
        threshold: float = 0.8,
        ttl_s: float = 600.0,
        momentum: float = 0.8,
        max_size: int = 5000,
    ) -> None:
        self.site_id = site_id
        self.threshold = threshold
        self.ttl_s = ttl_s
        self.momentum = momentum
        self.max_size = max_size
        self._ids: dict[int, _Identity] = {}
        self._next = 1

    def __len__(self) -> int:
        return len(self._ids)

    def assign(self, channel: str, track_id: int, feature: F32, now_s: float, current: int = 0) -> int:
        """The global id of (channel, track) whose latest embedding is ``feature`` (L2-normalised)."""
        self.expire(now_s)
        holder = (channel, track_id)
        if current and (ident := self._ids.get(current)) is not None:
            self._refine(ident, feature, now_s)
            ident.holders.add(holder)
            return current
        best, best_sim = 0, self.threshold
        for gid, ident in self._ids.items():
            if any(ch == channel and tid != track_id for ch, tid in ident.holders):
                continue  # worn by another live track of this view
            sim = float(ident.feature @ feature)
            if sim >= best_sim:
                best, best_sim = gid, sim
        if best:
            ident = self._ids[best]
            self._refine(ident, feature, now_s)
        else:
            if len(self._ids) >= self.max_size:
                oldest = min(self._ids, key=lambda g: self._ids[g].last_seen_s)
                del self._ids[oldest]
            best, self._next = self._next, self._next + 1
            ident = self._ids[best] = _Identity(feature.astype(np.float32).copy(), now_s)
        ident.holders.add(holder)
        return best

    def release(self, channel: str, track_id: int, gid: int) -> None:
        """The track ended; its identity stays in the gallery until it expires."""
        ident = self._ids.get(gid)
        if ident is not None:
            ident.holders.discard((channel, track_id))

    def expire(self, now_s: float) -> None:
        gone = [g for g, i in self._ids.items() if not i.holders and now_s - i.last_seen_s > self.ttl_s]
        for g in gone:
            del self._ids[g]

    def _refine(self, ident: _Identity, feature: F32, now_s: float) -> None:
        f = self.momentum * ident.feature + (1.0 - self.momentum) * feature
        ident.feature = (f / max(float(np.linalg.norm(f)), 1e-12)).astype(np.float32)
        ident.last_seen_s = now_s
