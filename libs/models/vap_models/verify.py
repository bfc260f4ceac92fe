"""Checks of a model file before it is used: present, not empty, and the expected sha256 (the reference
conversion of a shipped model, or the record of a conversion made on this machine). Signature and probe
inference are the runtime's part (the detector at load; ``vap_modelbuild.checks`` for the fetch command).

Every failure is a ModelVerificationError whose message names the file, what was expected and what to do.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from vap_models.catalogue import ModelSpec

__all__ = [
    "FETCH_COMMAND",
    "ModelVerificationError",
    "conversion_record",
    "recorded_sha256",
    "sha256_file",
    "verify_file",
]

# The command that reproduces or builds the models, as the error messages name it.
FETCH_COMMAND = "python -m vap_stack.models fetch"
_FETCH_HINT = f"run `{FETCH_COMMAND}` (or set VAP_MODELS_DIR to a directory of ready copies)"


class ModelVerificationError(Exception):
    """A model file that does not fit its spec: missing, corrupt, wrong hash, wrong inputs/outputs, or a
    probe inference that failed or gave outputs of the wrong shape."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def conversion_record(path: Path) -> Path:
    """Where the fetcher notes the sha256 of a model it converted itself (``<file>.sha256`` beside it)."""
    return path.with_name(path.name + ".sha256")


def recorded_sha256(path: Path) -> str | None:
    """The sha256 the fetcher recorded when it converted ``path`` and checked its signature and probe
    inference, or None. Converters are not bit-reproducible (TensorFlow, tf2onnx and PyTorch exports differ
    run to run), so a conversion made on this machine is known by this record, not by the reference hash."""
    try:
        text = conversion_record(path).read_text().split()
    except OSError:
        return None
    return text[0] if text else None


def verify_file(spec: ModelSpec, path: Path, *, check_hash: bool = True) -> str:
    """The file's sha256, after checking that it exists, is not empty and (``check_hash``, shipped models)
    matches the reference conversion or the record of a conversion made here."""
    if not path.is_file():
        raise ModelVerificationError(f"model {spec.name!r}: file {path} not found; {_FETCH_HINT}")
    if path.stat().st_size == 0:
        raise ModelVerificationError(f"model {spec.name!r}: file {path} is empty; {_FETCH_HINT}")
    digest = sha256_file(path)
    known = digest.startswith(spec.sha256_prefix) or digest == recorded_sha256(path)
    if check_hash and spec.sha256_prefix and not known:
        raise ModelVerificationError(
            f"model {spec.name!r}: {path} has sha256 {digest[:12]}..., expected {spec.sha256_prefix}... "
            f"or the one recorded when it was converted here (a different or corrupt file); "
            f"delete it and {_FETCH_HINT}"
        )
    return digest
