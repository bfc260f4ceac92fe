"""The one place ONNX Runtime sessions are opened: thread counts, graph optimisation, spinning and the
execution-provider choice (CUDA, or TensorRT inside ONNX Runtime, when asked for and this onnxruntime build
has it; the CPU always last, so an operator the accelerator lacks still runs).

Threads: ``intra_op_num_threads`` is the knob that matters for these small convolutional models (one
operator at a time, parallel inside it); inter-op parallelism only adds scheduling cost, so it stays 1
and the graph runs sequentially. ``ORT_ENABLE_ALL`` measured best on NanoDet (services/inference/README.md:
it brings the NCHWc layout and folds the converter's Pads and activations into the convolutions).

Spinning: ONNX Runtime's pool threads busy-wait between operators by default. That wins a little on an idle
machine, but on the 2-core target the decoders, the tracker and inference share the cores, and spinning
threads then take CPU from the very work they wait for (services/inference/README.md). Callers say so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

__all__ = ["Accelerator", "execution_providers", "open_session"]

Accelerator = Literal["cpu", "cuda", "tensorrt"]

# Best first; the CPU provider is appended to every choice.
_ACCELERATOR_PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": (),
    "cuda": ("CUDAExecutionProvider",),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
}


def execution_providers(accelerator: Accelerator = "cpu") -> list[str]:
    """The providers to ask ONNX Runtime for: the accelerator's that this onnxruntime build has, then
    the CPU."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted = [p for p in _ACCELERATOR_PROVIDERS[accelerator] if p in available]
    return [*wanted, "CPUExecutionProvider"]


def open_session(
    model: Path | bytes,
    *,
    threads: int,
    accelerator: Accelerator = "cpu",
    spin: bool | None = None,
    quiet: bool = False,
) -> Any:
    """An ``onnxruntime.InferenceSession`` of ``model`` (a file, or a serialised model).

    ``threads``: intra-op threads, 0 = ONNX Runtime's default (all cores). ``spin``: whether intra-op
    threads busy-wait (None = ONNX Runtime's default, which spins). ``quiet``: log errors only (TF-converted
    graphs warn about unused initialisers at every load). ONNX Runtime's own exceptions (a missing or
    invalid file) pass through: each caller words them for its user.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if quiet:
        options.log_severity_level = 3
    if spin is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=execution_providers(accelerator))
