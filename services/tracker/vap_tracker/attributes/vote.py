"""A track's attribute as a vote over frames: the label with the highest mean probability over the crops
classified so far, its mean probability as the confidence; "unknown" until enough crops agree enough."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from vap_proto.v1 import common_pb2

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
UNKNOWN = "unknown"


@dataclass(slots=True)
class Vote:
    labels: tuple[str, ...]
    min_votes: int = 3
    min_confidence: float = 0.6
    votes: int = 0
    _sum: F64 = field(init=False)

    def __post_init__(self) -> None:
        self._sum = np.zeros(len(self.labels), dtype=np.float64)

    def add(self, probabilities: F32) -> None:
        self._sum += probabilities
        self.votes += 1

    def result(self) -> tuple[str, float]:
        """(label, confidence): UNKNOWN with the leading label's confidence while the vote is too thin."""
        if self.votes == 0:
            return UNKNOWN, 0.0
        mean = self._sum / self.votes
        best = int(np.argmax(mean))
        confidence = float(mean[best])
        if self.votes < self.min_votes or confidence < self.min_confidence:
            return UNKNOWN, confidence
        return self.labels[best], confidence

    def to_proto(self, name: str) -> common_pb2.Attribute:
        label, confidence = self.result()
        return common_pb2.Attribute(name=name, value=label, confidence=confidence, votes=self.votes)
