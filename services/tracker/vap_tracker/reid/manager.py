"""ReID of one channel: which tracks get embedded, when, and what the embeddings are used for.

Budget and non-blocking: after each tracked frame at most ``max_crops_per_frame`` crops are taken (tracks
never embedded first, then the ones embedded longest ago, each at most every ``refresh_s``), copied out of
the frame, and handed to a worker thread as one batch. Results are collected at a later frame without
waiting (``Future.done()``); while ``max_in_flight`` batches of this channel are still running no new batch
is submitted, so a slow embedder lowers the embedding rate instead of building a queue, and tracking never
waits for it.

Uses of an embedding:
- re-attachment: a *young* person track (first seen less than ``reattach_window_s`` ago, embedded for the
  first time) that looks like a LOST track of the same channel (cosine >= threshold), started after that
  track was last seen and is where the lost one could have walked meanwhile, is merged into it: the object
  continues under the old id (ChannelTracker.reattach);
- global identity: every other embedded track gets (or refines) a global id from the site gallery.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vap_common.logs import get_logger
from vap_shmring.images import FrameImage
from vap_tracker.bytetrack import ChannelTracker, FrameTracks
from vap_tracker.reid.embedder import Embedder
from vap_tracker.reid.frames import budgeted_crops
from vap_tracker.reid.gallery import SiteGallery
from vap_tracker.track import State

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

_log = get_logger("vap.tracker.reid")
_CONFIRMED = int(State.CONFIRMED)
_LOST = int(State.LOST)
_REMOVED = int(State.REMOVED)


@dataclass(frozen=True, slots=True)
class ReidConfig:
    # Cosine similarity to re-attach a track or reuse a global id; None = the embedder's default.
    match_threshold: float | None = None
    max_crops_per_frame: int = 2
    max_in_flight: int = 2
    refresh_s: float = 2.0
    min_crop_px: int = 16
    classes: tuple[str, ...] = ("person",)
    reattach_window_s: float = 2.0
    # How far (box heights per second of the gap, plus half a height) a lost object may have moved.
    reattach_max_speed: float = 1.5
    feature_momentum: float = 0.8


@dataclass(slots=True)
class _Known:
    first_seen_s: float
    last_seen_s: float
    box: F64
    class_id: int
    feature: F32 | None = None
    embedded_at_s: float = float("-inf")
    pending: bool = False
    global_id: int = 0


@dataclass(slots=True)
class ReidStats:
    crops_embedded: int = 0
    crops_stale: int = 0
    batches_skipped_busy: int = 0
    reattached: int = 0


class ReidManager:
    def __init__(
        self,
        channel_id: str,
        tracker: ChannelTracker,
        embedder: Embedder,
        executor: cf.Executor,
        config: ReidConfig | None = None,
        gallery: SiteGallery | None = None,
    ) -> None:
        self.channel_id = channel_id
        self.tracker = tracker
        self.embedder = embedder
        self.executor = executor
        self.config = config or ReidConfig()
        self.gallery = gallery
        self.stats = ReidStats()
        self._known: dict[int, _Known] = {}
        self._inflight: list[tuple[cf.Future[F32], list[int]]] = []

    @property
    def threshold(self) -> float:
        t = self.config.match_threshold
        return self.embedder.default_threshold if t is None else t

    def take_stats(self) -> ReidStats:
        """The counts since the last call (for metrics), resetting them."""
        stats, self.stats = self.stats, ReidStats()
        return stats

    def global_ids(self) -> dict[int, int]:
        return {tid: k.global_id for tid, k in self._known.items() if k.global_id}

    def feature(self, track_id: int) -> F32 | None:
        k = self._known.get(track_id)
        return None if k is None else k.feature

    # ------------------------------------------------------------------------------------------------
    def after_frame(
        self, tracks: FrameTracks, class_names: Mapping[int, str], frame: FrameImage | None, now_s: float
    ) -> list[tuple[int, int]]:
        """Bookkeeping for one tracked frame, harvest of finished embeddings, submission of new crops.
        Returns the re-attachments done (young id, old id); the tracker reports the young track REMOVED
        with its next frame."""
        self._observe(tracks, now_s)
        merges = self._harvest(now_s)
        if frame is not None:
            self._submit(tracks, class_names, frame, now_s)
        return merges

    def wait(self, timeout: float = 5.0) -> None:
        """Block until the batches in flight are done (tests and orderly shutdown only)."""
        cf.wait([f for f, _ in self._inflight], timeout=timeout)

    def close(self) -> None:
        for tid in list(self._known):
            self._forget(tid)
        for fut, _ in self._inflight:
            fut.cancel()
        self._inflight.clear()

    # ------------------------------------------------------------------------------------------------
    def _observe(self, t: FrameTracks, now_s: float) -> None:
        for k, (tid, st, since) in enumerate(
            zip(t.track_id.tolist(), t.state.tolist(), t.frames_since_update.tolist(), strict=True)
        ):
            if st == _REMOVED:
                self._forget(tid)
                continue
            known = self._known.get(tid)
            if known is None:
                self._known[tid] = _Known(now_s, now_s, t.box[k].copy(), int(t.class_id[k]))
            elif since == 0:
                known.last_seen_s = now_s
                known.box = t.box[k].copy()
                known.class_id = int(t.class_id[k])

    def _forget(self, tid: int) -> None:
        known = self._known.pop(tid, None)
        if known is not None and known.global_id and self.gallery is not None:
            self.gallery.release(self.channel_id, tid, known.global_id)

    def _harvest(self, now_s: float) -> list[tuple[int, int]]:
        merges: list[tuple[int, int]] = []
        still: list[tuple[cf.Future[F32], list[int]]] = []
        for fut, ids in self._inflight:
            if not fut.done():
                still.append((fut, ids))
                continue
            for tid in ids:
                if (known := self._known.get(tid)) is not None:
                    known.pending = False
            try:
                feats = fut.result()
            except Exception:  # an embedder failure loses one batch (retried later), never the channel
                _log.exception("ReID embedding failed", channel=self.channel_id)
                continue
            for tid, feat in zip(ids, feats, strict=True):
                known = self._known.get(tid)
                if known is None:
                    continue  # ended meanwhile
                old = self._reattach_target(tid, known, feat) if known.feature is None else None
                if old is not None and self.tracker.reattach(tid, old):
                    merges.append((tid, old))
                    self.stats.reattached += 1
                    self._merge_known(tid, old, feat, now_s)
                    continue
                self._learn(tid, known, feat, now_s)
            self.stats.crops_embedded += len(ids)
        self._inflight = still
        return merges

    def _reattach_target(self, tid: int, young: _Known, feat: F32) -> int | None:
        cfg = self.config
        if young.last_seen_s - young.first_seen_s > cfg.reattach_window_s:
            return None
        best, best_sim = None, self.threshold
        yc = (young.box[0:2] + young.box[2:4]) * 0.5
        for oid, old in self._known.items():
            if oid == tid or old.feature is None or old.class_id != young.class_id:
                continue
            if self.tracker.state_of(oid) != State.LOST or old.last_seen_s >= young.first_seen_s:
                continue
            gap = young.first_seen_s - old.last_seen_s
            height = float(old.box[3] - old.box[1])
            oc = (old.box[0:2] + old.box[2:4]) * 0.5
            if float(np.hypot(*(yc - oc))) > (0.5 + cfg.reattach_max_speed * gap) * height:
                continue
            sim = float(old.feature @ feat)
            if sim >= best_sim:
                best, best_sim = oid, sim
        return best

    def _merge_known(self, young_id: int, old_id: int, feat: F32, now_s: float) -> None:
        young = self._known.pop(young_id)
        old = self._known[old_id]
        if young.global_id and self.gallery is not None:
            self.gallery.release(self.channel_id, young_id, young.global_id)
        old.last_seen_s, old.box = young.last_seen_s, young.box
        self._learn(old_id, old, feat, now_s)

    def _learn(self, tid: int, known: _Known, feat: F32, now_s: float) -> None:
        m = self.config.feature_momentum
        if known.feature is None:
            known.feature = feat.astype(np.float32)
        else:
            f = m * known.feature + (1.0 - m) * feat
            known.feature = (f / max(float(np.linalg.norm(f)), 1e-12)).astype(np.float32)
        known.embedded_at_s = now_s
        if self.gallery is not None:
            known.global_id = self.gallery.assign(self.channel_id, tid, feat, now_s, known.global_id)

    def _submit(
        self, t: FrameTracks, class_names: Mapping[int, str], frame: FrameImage, now_s: float
    ) -> None:
        cfg = self.config
        if cfg.max_crops_per_frame <= 0:
            return
        candidates: list[tuple[float, int, int]] = []
        for k, (tid, st, since, cls) in enumerate(
            zip(
                t.track_id.tolist(),
                t.state.tolist(),
                t.frames_since_update.tolist(),
                t.class_id.tolist(),
                strict=True,
            )
        ):
            if st != _CONFIRMED or since != 0 or class_names.get(cls, "") not in cfg.classes:
                continue
            known = self._known.get(tid)
            if known is None or known.pending or now_s - known.embedded_at_s < cfg.refresh_s:
                continue
            w, h = t.box[k, 2] - t.box[k, 0], t.box[k, 3] - t.box[k, 1]
            if min(w, h) < cfg.min_crop_px:
                continue
            candidates.append((known.embedded_at_s, k, tid))
        busy = len(self._inflight) >= cfg.max_in_flight
        picked = budgeted_crops(
            candidates, t.box, frame, max_crops=cfg.max_crops_per_frame, busy=busy, stats=self.stats
        )
        if picked is None:
            return
        ids, crops = picked
        for tid in ids:
            self._known[tid].pending = True
        self._inflight.append((self.executor.submit(self.embedder.embed, crops), ids))
