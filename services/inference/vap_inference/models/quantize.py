"""INT8 static quantisation of a float detector with ONNX Runtime's quantiser, calibrated on vtest frames.

Recipe (chosen by interleaved A/B measurements and the fp32 agreement check, services/inference/README.md):

- ``quant_pre_process``: symbolic shape inference + ONNX Runtime's basic optimiser (folds the converter's
  Pads into Conv, constant-folds the shape arithmetic), then ``graph_fixes`` (the -inf Pad before MaxPool);
- QDQ format (the format ONNX Runtime recommends; it fuses QDQ pairs into the same QLinearConv kernels as
  the QOperator format, measured equally fast, and TensorRT can read it too);
- uint8 activations, int8 weights, per output channel, ``reduce_range`` (7-bit weights): on AVX2 without
  VNNI the u8 x s8 multiply-add (VPMADDUBSW) saturates its int16 pair sums with full-range weights; 7 bits
  cannot overflow, so the model gives the same answers with and without VNNI (and matched the fp32 boxes
  more tightly here: mean IoU 0.965 against 0.949);
- MinMax calibration on frames of the vtest sample video, preprocessed exactly as the service does.

The frames are decoded with PyAV and preprocessed with OpenCV; both are deterministic, and so is the
quantiser given the same ranges, so the same base model and library versions give the same file.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from vap_common.paths import sample_video
from vap_inference.errors import ModelVerificationError
from vap_inference.models.registry import ModelSpec

U8 = npt.NDArray[np.uint8]

CALIBRATION_VIDEO = "vtest-576p25.mp4"
# Every 40th frame from 5: spread over the whole clip (crowd density changes), and disjoint from the frames
# the agreement check uses (AGREEMENT_FRAMES in derived.py).
CALIBRATION_FRAMES: tuple[int, ...] = tuple(range(5, 795, 40))


def video_frames(indices: Sequence[int], video: str = CALIBRATION_VIDEO) -> dict[int, U8]:
    """BGR frames of a sample video by index."""
    import av

    path = sample_video(video)
    if not path.is_file():
        raise ModelVerificationError(
            f"calibration video {path} not found: set VAP_SAMPLE_DATA_DIR to the directory with the vtest "
            "sample videos (see shared/data/README.md)"
        )
    wanted = set(indices)
    last = max(wanted)
    frames: dict[int, U8] = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                frames[i] = np.asarray(frame.to_ndarray(format="bgr24"), np.uint8)
            if i >= last:
                break
    missing = sorted(wanted - set(frames))
    if missing:
        raise ModelVerificationError(f"{path.name} has no frames {missing}")
    return frames


def calibration_inputs(spec: ModelSpec, base: Path, frames: dict[int, U8]) -> tuple[str, list[np.ndarray]]:
    """The model's input name and one preprocessed input tensor per frame (batch 1, as the service
    feeds them)."""
    from vap_inference import decoders
    from vap_inference.backends.onnxruntime import OrtBackend
    from vap_inference.preprocess import Preprocessor

    backend = OrtBackend(base, threads=1, batch_cap=1)
    try:
        _, fmt, _ = decoders.bind(spec, backend.inputs, backend.outputs, backend.metadata)
        name = backend.inputs[0].name
    finally:
        backend.close()
    pre = Preprocessor(fmt, 1)
    tensors = []
    for index in sorted(frames):
        pre.from_bgr(0, frames[index])
        tensors.append(pre.inputs(1).copy())
    return name, tensors


def quantize_int8(spec: ModelSpec, base: Path, out: Path, frames: dict[int, U8]) -> None:
    """Write the INT8 QDQ model of ``base`` (a float model of ``spec``'s family) to ``out``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from vap_inference.models.graph_fixes import fold_neg_inf_pads_into_maxpool

    input_name, tensors = calibration_inputs(spec, base, frames)

    class _Frames(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type information
        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = iter(tensors)

        def get_next(self) -> dict[str, np.ndarray] | None:
            tensor = next(self._it, None)
            return None if tensor is None else {input_name: tensor}

    with tempfile.TemporaryDirectory(prefix="vap-quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(base), str(prepared))
        model = onnx.load(str(prepared))
        fold_neg_inf_pads_into_maxpool(model)
        fixed = Path(tmp) / "fixed.onnx"
        onnx.save(model, str(fixed))
        quantize_static(
            str(fixed),
            str(out),
            _Frames(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
