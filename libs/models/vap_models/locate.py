"""The file to load for a model, checked: a shipped or user model in the models directory, or a derived
model (e.g. ``nanodet-m-416-int8``, the INT8 quantisation of ``nanodet-m-416``) in the derived-model cache.

Derived models live in ``$VAP_DERIVED_MODELS_DIR``, else ``models/derived`` in the per-user cache, never in
the models directory itself ($VAP_MODELS_DIR may be a shared directory of ready copies). A build is
``<name>.<base sha256[:16]>.r<recipe version>.onnx`` with a JSON record beside it (base and own sha256,
recipe, library versions, calibration frames, agreement with the base model; written by
``vap_modelbuild.derive``). At every load the record must name the base file's current hash, the current
recipe version and the file's own hash.

Building a missing derived model is the build tools' job: ``locate_model`` takes a builder to call
(under a lock, so one process builds while the others wait) and, without one, says what to run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from vap_common import paths
from vap_common.logs import get_logger
from vap_models.catalogue import ModelSpec, builtin
from vap_models.verify import FETCH_COMMAND, ModelVerificationError, verify_file

__all__ = [
    "DERIVED_ENV",
    "RECIPES",
    "RECIPE_VERSIONS",
    "Builder",
    "base_spec",
    "build_record_path",
    "cache_path",
    "derived_models_dir",
    "locate_model",
    "recipe_version",
    "verify_derived",
]

_log = get_logger("vap.models.locate")

DERIVED_ENV = "VAP_DERIVED_MODELS_DIR"
# Per recipe; bump one when its recipe (vap_modelbuild) changes what it writes: its old cache entries are
# then simply not found (the other recipes' builds stay valid). int8: static INT8 quantisation
# (vap_modelbuild/quantize.py; r2: first conv in fp32 with its MaxPool moved before the LeakyRelu, one range
# per Concat, head convs padded to 128); raw-outputs: the SSD graph without its NMS subgraph and without its
# per-image resize Loop (vap_modelbuild/graph_fixes.py; r2 added the resize Loop).
RECIPE_VERSIONS: dict[str, int] = {"int8": 2, "raw-outputs": 2}
RECIPES = tuple(RECIPE_VERSIONS)

# builder(spec, base file, base sha256, where to write the build): writes the file and its record.
Builder = Callable[[ModelSpec, Path, str, Path], object]


def derived_models_dir() -> Path:
    if given := os.environ.get(DERIVED_ENV):
        return Path(given)
    return paths.cache_dir() / "models" / "derived"


def recipe_version(spec: ModelSpec) -> int:
    return RECIPE_VERSIONS.get(spec.recipe, 0)


def cache_path(spec: ModelSpec, base_sha256: str) -> Path:
    return derived_models_dir() / f"{spec.name}.{base_sha256[:16]}.r{recipe_version(spec)}.onnx"


def build_record_path(path: Path) -> Path:
    """The JSON build record beside a derived model file."""
    return path.with_suffix(".json")


def base_spec(spec: ModelSpec) -> ModelSpec:
    if not spec.base:
        raise ValueError(f"model {spec.name!r} is not a derived model")
    return builtin(spec.base)


def locate_model(spec: ModelSpec, models_dir: Path, *, build: Builder | None = None) -> tuple[Path, str]:
    """The file to load for ``spec`` and its sha256, checked: a shipped or user model in the models
    directory (present, not empty), or a derived model from the cache (built now by ``build`` when missing
    and one is given; its record must match the base file and itself)."""
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
        if build is None:
            raise ModelVerificationError(
                f"model {spec.name!r}: not built yet for base {base.name} {base_sha[:12]} ({path} absent); "
                f"run `{FETCH_COMMAND} --only {spec.name}`"
            )
        with _build_lock(path):
            if not path.exists():  # another process may have built it while we waited
                _log.warning("building derived model (one-time, cached)", model=spec.name, path=str(path))
                build(spec, base_path, base_sha, path)
    return path, verify_derived(spec, path, base_sha)


def verify_derived(spec: ModelSpec, path: Path, base_sha256: str) -> str:
    """The derived file's sha256 after checking it against its record and the current base file."""
    hint = f"delete {path} (and its .json) or run `{FETCH_COMMAND} --force --only {spec.name}`"
    digest = verify_file(spec, path, check_hash=False)
    try:
        record = json.loads(build_record_path(path).read_text())
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
