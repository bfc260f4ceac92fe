"""The attribute stage of one channel: which tracks get a crop classified, when, and their votes.

Budget and non-blocking, as ReID (reid/manager.py): after each tracked frame at most
``max_crops_per_frame`` crops of confirmed, matched tracks are copied out of the frame (the ring slot's
generation is checked after the copy by ``FrameImage.crops``: a rewritten slot gives no crops, counted as
stale) and handed to a worker thread as one batch; finished batches are collected at a later frame without
waiting, and while ``max_in_flight`` batches of the channel run nothing new is submitted. Round-robin over
the tracks that most need a vote: fewest votes first, then the longest since their last look; a track is
looked at again after ``refresh_s`` and no more once it has ``max_votes`` votes.

A person crop narrower than ``min_person_px``, or one without a face of at least ``min_face_px`` (face
classifiers), gives no vote: the track's attribute stays "unknown" rather than a guess.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from vap_common.logs import get_logger
from vap_proto.v1 import common_pb2
from vap_shmring.images import FrameImage
from vap_tracker.attributes.classifier import OnnxClassifier
from vap_tracker.attributes.faces import FaceAligner
from vap_tracker.attributes.vote import Vote
from vap_tracker.bytetrack import FrameTracks
from vap_tracker.reid.frames import budgeted_crops
from vap_tracker.track import State

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

_log = get_logger("vap.tracker.attributes")
_CONFIRMED = int(State.CONFIRMED)
_REMOVED = int(State.REMOVED)


@dataclass(frozen=True, slots=True)
class AttributeConfig:
    max_crops_per_frame: int = 2
    max_in_flight: int = 1
    refresh_s: float = 0.2
    max_votes: int = 25
    min_votes: int = 3
    min_person_px: int = 32
    classes: tuple[str, ...] = ("person",)


@dataclass(slots=True)
class AttributeStats:
    crops_classified: int = 0
    crops_stale: int = 0
    crops_without_face: int = 0
    batches_skipped_busy: int = 0


# Per crop, per classifier: the label probabilities, or None (no usable face).
CropResult = list[F32 | None]


class Classifiers:
    """The classifiers and the face aligner, run in the worker thread over one batch of BGR crops."""

    def __init__(self, classifiers: Sequence[OnnxClassifier], faces: FaceAligner | None) -> None:
        self.classifiers = list(classifiers)
        self.faces = faces
        needs_faces = any(c.config.crop == "face" for c in self.classifiers)
        if needs_faces and faces is None:
            raise ValueError("face classifiers configured without a face aligner")
        self._chip_sizes = tuple(
            sorted({max(c.config.input_width, c.config.input_height) for c in self.classifiers})
        )
        self.crops_seen = 0  # every crop handed to run(): the budget, counted

    @property
    def names(self) -> list[str]:
        return [c.config.name for c in self.classifiers]

    def run(self, crops: list[U8]) -> list[CropResult]:
        self.crops_seen += len(crops)
        rgb: list[U8] = [np.asarray(cv2.cvtColor(c, cv2.COLOR_BGR2RGB)) if c.size else c for c in crops]
        faces = [self.faces.find(img, self._chip_sizes) if self.faces and img.size else None for img in rgb]
        results: list[CropResult] = [[None] * len(self.classifiers) for _ in crops]
        for j, clf in enumerate(self.classifiers):
            cfg = clf.config
            if cfg.crop == "face":
                size = max(cfg.input_width, cfg.input_height)
                rows = [k for k, f in enumerate(faces) if f is not None]
                chips = [faces[k].chips[size] for k in rows]  # type: ignore[union-attr]
            else:
                rows = [k for k, img in enumerate(rgb) if img.size]
                chips = [rgb[k] for k in rows]
            if chips:
                for k, p in zip(rows, clf.probabilities(chips), strict=True):
                    results[k][j] = p
        return results


@dataclass(slots=True)
class _Track:
    votes: list[Vote]
    looked_at_s: float = float("-inf")
    pending: bool = False
    # The votes as protos: every frame publishes them, they change only with a new vote (then None).
    protos: list[common_pb2.Attribute] | None = None


@dataclass(slots=True)
class _Batch:
    future: cf.Future[list[CropResult]]
    track_ids: list[int] = field(default_factory=list)


class AttributeStage:
    def __init__(
        self,
        channel_id: str,
        classifiers: Classifiers,
        executor: cf.Executor,
        config: AttributeConfig | None = None,
    ) -> None:
        self.channel_id = channel_id
        self.classifiers = classifiers
        self.executor = executor
        self.config = config or AttributeConfig()
        self.stats = AttributeStats()
        self._tracks: dict[int, _Track] = {}
        self._inflight: list[_Batch] = []

    def take_stats(self) -> AttributeStats:
        stats, self.stats = self.stats, AttributeStats()
        return stats

    def after_frame(
        self, tracks: FrameTracks, class_names: Mapping[int, str], frame: FrameImage | None, now_s: float
    ) -> None:
        self._harvest()
        self._observe(tracks, class_names)
        if frame is not None:
            self._submit(tracks, frame, now_s)

    def attributes(self, track_id: int) -> list[common_pb2.Attribute]:
        known = self._tracks.get(track_id)
        if known is None:
            return []
        if known.protos is None:
            known.protos = [
                v.to_proto(name) for v, name in zip(known.votes, self.classifiers.names, strict=True)
            ]
        return known.protos

    def attribute_map(self) -> dict[int, list[common_pb2.Attribute]]:
        return {tid: self.attributes(tid) for tid in self._tracks}

    def wait(self, timeout: float = 10.0) -> None:
        """Block until the batches in flight are done (tests and orderly shutdown only)."""
        cf.wait([b.future for b in self._inflight], timeout=timeout)

    def close(self) -> None:
        for batch in self._inflight:
            batch.future.cancel()
        self._inflight.clear()
        self._tracks.clear()

    # ------------------------------------------------------------------------------------------------
    def _new_track(self) -> _Track:
        votes = [
            Vote(c.config.output_labels, self.config.min_votes, c.config.min_confidence)
            for c in self.classifiers.classifiers
        ]
        return _Track(votes)

    def _observe(self, t: FrameTracks, class_names: Mapping[int, str]) -> None:
        for tid, st, cls in zip(t.track_id.tolist(), t.state.tolist(), t.class_id.tolist(), strict=True):
            if st == _REMOVED:
                self._tracks.pop(tid, None)
            elif (
                tid not in self._tracks
                and st == _CONFIRMED
                and class_names.get(cls, "") in self.config.classes
            ):
                self._tracks[tid] = self._new_track()

    def _harvest(self) -> None:
        still: list[_Batch] = []
        for batch in self._inflight:
            if not batch.future.done():
                still.append(batch)
                continue
            for tid in batch.track_ids:
                if (known := self._tracks.get(tid)) is not None:
                    known.pending = False
            try:
                results = batch.future.result()
            except Exception:  # a classifier failure loses one batch, never the channel
                _log.exception("attribute classification failed", channel=self.channel_id)
                continue
            for tid, per_clf in zip(batch.track_ids, results, strict=True):
                known = self._tracks.get(tid)
                if known is None:
                    continue  # ended meanwhile
                if all(p is None for p in per_clf):
                    self.stats.crops_without_face += 1
                for vote, p in zip(known.votes, per_clf, strict=True):
                    if p is not None:
                        vote.add(p)
                known.protos = None
            self.stats.crops_classified += len(batch.track_ids)
        self._inflight = still

    def _submit(self, t: FrameTracks, frame: FrameImage, now_s: float) -> None:
        cfg = self.config
        if cfg.max_crops_per_frame <= 0:
            return
        candidates: list[tuple[tuple[int, float], int, int]] = []
        for k, (tid, st, since) in enumerate(
            zip(t.track_id.tolist(), t.state.tolist(), t.frames_since_update.tolist(), strict=True)
        ):
            known = self._tracks.get(tid)
            if known is None or st != _CONFIRMED or since != 0 or known.pending:
                continue
            votes = min(v.votes for v in known.votes)
            if votes >= cfg.max_votes or now_s - known.looked_at_s < cfg.refresh_s:
                continue
            if min(t.box[k, 2] - t.box[k, 0], t.box[k, 3] - t.box[k, 1]) < cfg.min_person_px:
                continue  # too small to say anything: stays unknown, costs no budget
            candidates.append(((votes, known.looked_at_s), k, tid))  # fewest votes, then longest unseen
        busy = len(self._inflight) >= cfg.max_in_flight
        picked = budgeted_crops(
            candidates, t.box, frame, max_crops=cfg.max_crops_per_frame, busy=busy, stats=self.stats
        )
        if picked is None:
            return
        ids, crops = picked
        for tid in ids:
            known = self._tracks[tid]
            known.pending, known.looked_at_s = True, now_s
        self._inflight.append(_Batch(self.executor.submit(self.classifiers.run, crops), ids))
