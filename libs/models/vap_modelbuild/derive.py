"""Derived models: files VAP builds itself from a shipped base model (e.g. ``nanodet-m-416-int8``, the INT8
quantisation of ``nanodet-m-416``), cached and keyed by the base file's sha256.

Where: ``$VAP_DERIVED_MODELS_DIR``, else ``models/derived`` in the per-user cache, never the models
directory itself ($VAP_MODELS_DIR may be a shared directory of ready copies). Each build writes
``<name>.<base sha256[:16]>.r<recipe version>.onnx`` and a JSON record beside it
(base and own sha256, recipe, library versions, calibration frames, agreement with the base model).

Built by ``python -m vap_inference.models fetch`` and, on a cache miss, when the service first loads the
model (the same code: seconds). Verified at every load: the record must name the base file's current hash
and the file's own hash; then the detector's signature and probe checks run as for any model. A build must
also agree with its base model before it is installed: on frames the calibration did not use, at least
``MIN_AGREEMENT`` of the base model's person boxes must be found again (IoU >= 0.5).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vap_common import paths
from vap_common.logs import get_logger
from vap_inference.errors import ModelVerificationError
from vap_inference.models.registry import ModelSpec, builtin
from vap_inference.models.verify import sha256_file, verify_file

_log = get_logger("vap.inference.derived")

DERIVED_ENV = "VAP_DERIVED_MODELS_DIR"
# Per recipe; bump one when its recipe changes what it writes: its old cache entries are then simply not
# found (the other recipes' builds stay valid). int8: static INT8 quantisation (models/quantize.py; r2: first
# conv in fp32 with its MaxPool moved before the LeakyRelu, one range per Concat, head convs padded to 128);
# raw-outputs: the SSD graph without its NMS subgraph and without its per-image resize Loop
# (models/graph_fixes.py; r2 added the resize Loop).
RECIPE_VERSIONS: dict[str, int] = {"int8": 2, "raw-outputs": 2}
RECIPES = tuple(RECIPE_VERSIONS)
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


def derived_models_dir() -> Path:
    if given := os.environ.get(DERIVED_ENV):
        return Path(given)
    return paths.cache_dir() / "models" / "derived"


def recipe_version(spec: ModelSpec) -> int:
    return RECIPE_VERSIONS.get(spec.recipe, 0)


def cache_path(spec: ModelSpec, base_sha256: str) -> Path:
    return derived_models_dir() / f"{spec.name}.{base_sha256[:16]}.r{recipe_version(spec)}.onnx"


def _record_path(path: Path) -> Path:
    return path.with_suffix(".json")


def base_spec(spec: ModelSpec) -> ModelSpec:
    if not spec.base:
        raise ValueError(f"model {spec.name!r} is not a derived model")
    return builtin(spec.base)


def locate_model(spec: ModelSpec, models_dir: Path, *, build: bool = True) -> tuple[Path, str]:
    """The file to load for ``spec`` and its sha256, checked: a shipped or user model in the models
    directory (present, not empty), or a derived model from the cache (built now when missing and
    ``build``; its record must match the base file and itself)."""
    if not spec.base:
        path = spec.resolve_path(models_dir)
        # The hash of the reference conversion is checked by the fetch command; here any file that passes
        # the signature and probe checks is used (a local re-conversion may differ in its last bits).
        return path, verify_file(spec, path, check_hash=False)
    base = base_spec(spec)
    base_path = base.resolve_path(models_dir)
    base_sha = verify_file(base, base_path, check_hash=False)
    path = cache_path(spec, base_sha)
    if not path.exists():
        if not build:
            raise ModelVerificationError(
                f"model {spec.name!r}: not built yet for base {base.name} {base_sha[:12]} ({path} absent); "
                f"run `python -m vap_inference.models fetch --only {spec.name}`"
            )
        with _build_lock(path):
            if not path.exists():  # another process may have built it while we waited
                _log.warning("building derived model (one-time, cached)", model=spec.name, path=str(path))
                build_derived(spec, base_path, base_sha, path)
    return path, verify_derived(spec, path, base_sha)


def verify_derived(spec: ModelSpec, path: Path, base_sha256: str) -> str:
    """The derived file's sha256 after checking it against its record and the current base file."""
    hint = (
        f"delete {path} (and its .json) or run "
        f"`python -m vap_inference.models fetch --force --only {spec.name}`"
    )
    digest = verify_file(spec, path, check_hash=False)
    try:
        record = json.loads(_record_path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ModelVerificationError(
            f"model {spec.name!r}: no readable build record for {path}: {exc}; {hint}"
        ) from exc
    version = recipe_version(spec)
    if record.get("base_sha256") != base_sha256 or record.get("recipe_version") != version:
        raise ModelVerificationError(
            f"model {spec.name!r}: {path} was built from base {str(record.get('base_sha256'))[:12]} "
            f"recipe r{record.get('recipe_version')}, not from the current {base_sha256[:12]} "
            f"r{version}; {hint}"
        )
    if record.get("sha256") != digest:
        raise ModelVerificationError(
            f"model {spec.name!r}: {path} has sha256 {digest[:12]}, its build record says "
            f"{str(record.get('sha256'))[:12]} (modified or corrupt); {hint}"
        )
    return digest


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_derived(spec: ModelSpec, base_path: Path, base_sha256: str, path: Path) -> DerivedRecord:
    """Build ``spec`` from ``base_path`` into ``path`` (+ record), after checking its agreement with the
    base model; raises ModelVerificationError when it does not agree well enough."""
    import onnx
    import onnxruntime

    from vap_inference.models import quantize

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
            quantize.quantize_int8(base, base_path, out, {i: frames[i] for i in calibration_frames})
        else:
            _cut_postprocessing(base_path, out)
        agreement = person_agreement(base, base_path, spec, out, [frames[i] for i in AGREEMENT_FRAMES])
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
        record_tmp.replace(_record_path(path))
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

    from vap_inference.models.graph_fixes import cut_ssd_postprocessing, replace_ssd_resize_loop

    model = onnx.load(str(base_path))
    try:
        cut_ssd_postprocessing(model)
        replace_ssd_resize_loop(model)
    except ValueError as exc:
        raise ModelVerificationError(f"{base_path.name}: {exc}") from exc
    onnx.save(model, str(out))


def person_agreement(
    reference_spec: ModelSpec,
    reference: Path,
    candidate_spec: ModelSpec,
    candidate: Path,
    images: list[npt.NDArray[np.uint8]],
) -> Agreement:
    """Run both models on ``images`` (BGR) and match their person boxes (see ``Agreement``)."""
    from vap_inference.backends.onnxruntime import OrtBackend
    from vap_inference.detector import Detector

    detectors = [
        Detector(s, OrtBackend(p, threads=2, batch_cap=1), max_batch=1).load()
        for s, p in ((reference_spec, reference), (candidate_spec, candidate))
    ]
    try:
        boxes = [
            [d.detect_image(img, d.options(class_names=["person"]))[0].boxes for img in images]
            for d in detectors
        ]
    finally:
        for d in detectors:
            d.close()
    return match_boxes(boxes[0], boxes[1])


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
