"""The model library: the catalogue of the models VAP knows, verification of their files, where a model's
file is (models directory, derived-model cache, files packaged in wheels) and the one ONNX Runtime session
factory. Used by inference, the tracker's ReID and attribute stages, and the build tools (vap_modelbuild)."""

from vap_models.catalogue import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    ModelKind,
    ModelSpec,
    builtin,
    yolo_spec,
)
from vap_models.locate import locate_model
from vap_models.packaged import PackagedModelError
from vap_models.session import open_session
from vap_models.verify import ModelVerificationError, sha256_file, verify_file

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "ModelKind",
    "ModelSpec",
    "ModelVerificationError",
    "PackagedModelError",
    "builtin",
    "locate_model",
    "open_session",
    "sha256_file",
    "verify_file",
    "yolo_spec",
]
