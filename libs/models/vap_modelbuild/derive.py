"""Building derived models: files VAP makes itself from a shipped base model (e.g. ``nanodet-m-416-int8``,
the INT8 quantisation of ``nanodet-m-416``) into the derived-model cache that ``vap_models.locate`` reads
(keyed by the base file's sha256 and the recipe version, with a JSON build record beside each file).

Built by ``python -m vap_stack.models fetch`` and, on a cache miss, when the inference service first loads
the model (``locate_or_build``, the same code: seconds). A build must agree with its base model before it is
installed: on frames the calibration did not use, at least ``MIN_AGREEMENT`` of the base model's person
boxes must be found again (IoU >= 0.5). Running the models is the inference runtime's part, given as a
``DetectorRuntime``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vap_common.logs import get_logger
from vap_modelbuild.checks import DetectorRuntime
from vap_models.catalogue import ModelSpec
from vap_models.locate import (
    RECIPES,
    base_spec,
    build_record_path,
    locate_model,
    recipe_version,
)
from vap_models.verify import ModelVerificationError, sha256_file

_log = get_logger("vap.modelbuild.derive")

# Frames of the calibration video for the agreement check: every 40th from 25, none used for calibration.
AGREEMENT_FRAMES: tuple[int, ...] = tuple(range(25, 795, 40))
AGREEMENT_IOU = 0.5
MIN_AGREEMENT = 0.9

F32 = npt.NDArray[np.float32]
Boxes = npt.NDArray[np.floating[Any]]


@dataclass(frozen=True)
class Agreement:
    """How many of the reference model's person boxes the candidate found again (IoU >= 0.5, one to one)."""

    matched: int
    reference: int
    extra: int  # candidate boxes that match no reference box
    mean_iou: float

    @property
    def ratio(self) -> float:
        return self.matched / self.reference if self.reference else 1.0


@dataclass(frozen=True)
class DerivedRecord:
    model: str
    base: str
    base_sha256: str
    sha256: str
    recipe: str
    recipe_version: int
    onnxruntime: str
    onnx: str
    calibration_video: str
    calibration_frames: list[int]
    agreement: dict[str, float]
    build_seconds: float


def locate_or_build(spec: ModelSpec, models_dir: Path, runtime: DetectorRuntime) -> tuple[Path, str]:
    """``vap_models.locate.locate_model``, building a derived model that is not in the cache yet."""

    def build(spec: ModelSpec, base_path: Path, base_sha256: str, path: Path) -> DerivedRecord:
        return build_derived(spec, base_path, base_sha256, path, runtime)

    return locate_model(spec, models_dir, build=build)


def build_derived(
    spec: ModelSpec, base_path: Path, base_sha256: str, path: Path, runtime: DetectorRuntime
) -> DerivedRecord:
    """Build ``spec`` from ``base_path`` into ``path`` (+ record), after checking its agreement with the
    base model (both run by ``runtime``); raises ModelVerificationError when it does not agree well
    enough."""
    import onnx
    import onnxruntime

    from vap_modelbuild import quantize

    if spec.recipe not in RECIPES:
        raise ModelVerificationError(
            f"model {spec.name!r}: unknown recipe {spec.recipe!r} (known: {RECIPES})"
        )
    started = time.monotonic()
    base = base_spec(spec)
    calibrated = spec.recipe == "int8"
    calibration_frames = quantize.CALIBRATION_FRAMES if calibrated else ()
    frames = quantize.video_frames(calibration_frames + AGREEMENT_FRAMES)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{spec.name}-", dir=path.parent) as tmp:
        out = Path(tmp) / path.name
        if calibrated:
            calibration = {i: frames[i] for i in calibration_frames}
            quantize.quantize_int8(base, base_path, out, calibration, runtime)
        else:
            _cut_postprocessing(base_path, out)
        images = [frames[i] for i in AGREEMENT_FRAMES]
        agreement = person_agreement(runtime, base, base_path, spec, out, images)
        if agreement.ratio < MIN_AGREEMENT:
            raise ModelVerificationError(
                f"model {spec.name!r}: the {spec.recipe} build found only {agreement.matched} of "
                f"{agreement.reference} person boxes of {base.name} (< {MIN_AGREEMENT:.0%}); not installed"
            )
        record = DerivedRecord(
            model=spec.name,
            base=base.name,
            base_sha256=base_sha256,
            sha256=sha256_file(out),
            recipe=spec.recipe,
            recipe_version=recipe_version(spec),
            onnxruntime=onnxruntime.__version__,
            onnx=onnx.__version__,
            calibration_video=quantize.CALIBRATION_VIDEO if calibrated else "",
            calibration_frames=list(calibration_frames),
            agreement={**asdict(agreement), "ratio": round(agreement.ratio, 4)},
            build_seconds=round(time.monotonic() - started, 1),
        )
        record_tmp = Path(tmp) / "record.json"
        record_tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
        # Model first, record last: a reader that finds the record finds the model it describes.
        shutil.move(out, path)
        record_tmp.replace(build_record_path(path))
    _log.info(
        "derived model built",
        model=spec.name,
        sha256=record.sha256[:12],
        agreement=f"{agreement.matched}/{agreement.reference}",
        seconds=record.build_seconds,
    )
    return record


def _cut_postprocessing(base_path: Path, out: Path) -> None:
    import onnx

    from vap_modelbuild.graph_fixes import cut_ssd_postprocessing, replace_ssd_resize_loop

    model = onnx.load(str(base_path))
    try:
        cut_ssd_postprocessing(model)
        replace_ssd_resize_loop(model)
    except ValueError as exc:
        raise ModelVerificationError(f"{base_path.name}: {exc}") from exc
    onnx.save(model, str(out))


def person_agreement(
    runtime: DetectorRuntime,
    reference_spec: ModelSpec,
    reference: Path,
    candidate_spec: ModelSpec,
    candidate: Path,
    images: list[npt.NDArray[np.uint8]],
) -> Agreement:
    """Run both models on ``images`` (BGR) and match their person boxes (see ``Agreement``)."""
    return match_boxes(
        runtime.person_boxes(reference_spec, reference, images),
        runtime.person_boxes(candidate_spec, candidate, images),
    )


def iou_matrix(a: Boxes, b: Boxes) -> npt.NDArray[np.float64]:
    """IoU of every box of ``a`` (N, 4: x1, y1, x2, y2) with every box of ``b``; 0 where a box is empty."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.asarray(np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0), np.float64)


def match_boxes(reference: list[F32], candidate: list[F32], iou: float = AGREEMENT_IOU) -> Agreement:
    """Greedy one-to-one matching per frame, best pairs first."""
    matched = total = extra = 0
    ious: list[float] = []
    for ref, cand in zip(reference, candidate, strict=True):
        total += len(ref)
        used_c: set[int] = set()
        if len(ref) and len(cand):
            m = iou_matrix(ref, cand)
            used_r: set[int] = set()
            for flat in np.argsort(-m, axis=None, kind="stable"):
                r, c = divmod(int(flat), m.shape[1])
                if m[r, c] < iou:
                    break
                if r in used_r or c in used_c:
                    continue
                used_r.add(r)
                used_c.add(c)
                ious.append(float(m[r, c]))
            matched += len(used_r)
        extra += len(cand) - len(used_c)
    return Agreement(matched, total, extra, round(float(np.mean(ious)), 4) if ious else 0.0)
