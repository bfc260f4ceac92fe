"""The model catalogue (registry), verification of model files, and the model-fetch command
(``python -m vap_inference.models fetch|list``)."""

from vap_inference.models.registry import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    ModelKind,
    ModelSpec,
    builtin,
    yolo_spec,
)
from vap_inference.models.verify import ModelVerificationError, sha256_file, verify_file

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "ModelKind",
    "ModelSpec",
    "ModelVerificationError",
    "builtin",
    "sha256_file",
    "verify_file",
    "yolo_spec",
]
