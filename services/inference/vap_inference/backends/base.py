"""What the detector needs from a runtime: tensor metadata, the largest batch it accepts, and run()."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from vap_proto.v1 import detection_pb2, inference_pb2

Dim = int | str | None  # a fixed size, or a symbolic/unknown (dynamic) one


class BackendError(RuntimeError):
    """A model that cannot be loaded or run by a backend; the message says which model and why."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype[np.generic]

    def fixed(self, axis: int) -> int | None:
        """The size of ``axis`` when fixed, else None (dynamic)."""
        dim = self.shape[axis]
        return dim if isinstance(dim, int) and dim > 0 else None


class Backend(Protocol):
    # For ModelInfo and InferenceStats.
    backend_kind: detection_pb2.InferenceBackend.ValueType
    precision: inference_pb2.ModelPrecision.ValueType
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    # Whether run() may be called from several threads at once (each caller with its own feed): ONNX
    # Runtime sessions allow it; one TensorRT execution context with its device buffers does not.
    concurrent_runs: bool

    @property
    def max_batch(self) -> int:
        """The largest batch the runtime accepts for this model (fixed batch dim 1 -> 1). Whether results at
        that batch are *correct* is for the detector's probe to find out."""
        ...

    def run(self, feed: dict[str, npt.NDArray[np.generic]]) -> list[npt.NDArray[np.generic]]:
        """Run once; returns the outputs in ``outputs`` order, batch first. Concurrent calls only where
        ``concurrent_runs`` says so (each detector lane serialises its own calls: its buffers are shared)."""
        ...

    def close(self) -> None: ...
