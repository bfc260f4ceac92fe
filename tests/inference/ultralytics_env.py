"""Ultralytics in a virtual environment of its own, built once per machine in VAP's cache.

Ultralytics needs PyTorch, which VAP itself does not (and must not pull into its lock). The model fetcher
already builds a throwaway PyTorch environment for the ReID embedder the same way; this one adds
Ultralytics, so the YOLO tests run everywhere instead of skipping where ultralytics is not installed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

from vap_common.paths import cache_dir

REQUIREMENTS = ("torch==2.13.0", "onnx==1.23.2", "ultralytics==8.4.190")
INSTALL_TIMEOUT_S = 1800


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # two test sessions at once build it once
        yield


def python() -> Path:
    """The environment's interpreter, building the environment first if this machine has none."""
    key = hashlib.sha256(" ".join(REQUIREMENTS).encode()).hexdigest()[:12]
    root = cache_dir() / "venvs" / f"ultralytics-{key}"
    ready = root / ".ready"
    with _locked(root.with_suffix(".lock")):
        if not ready.exists():
            print(f"[test assets] building {root} ({', '.join(REQUIREMENTS)}; once)", file=sys.__stderr__)
            venv.EnvBuilder(with_pip=True, clear=True).create(root)
            subprocess.run(
                [str(root / "bin" / "python"), "-m", "pip", "install", "-q", *REQUIREMENTS],
                check=True,
                timeout=INSTALL_TIMEOUT_S,
            )
            ready.touch()
    return root / "bin" / "python"


def run(script: str, *args: str, cwd: Path) -> None:
    """Run ``script`` (Python source) in the environment, offline, in ``cwd``."""
    env = dict(os.environ, YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(cwd / "cfg"))
    subprocess.run(
        [str(python()), "-c", script, *args], cwd=cwd, env=env, check=True, timeout=INSTALL_TIMEOUT_S
    )
