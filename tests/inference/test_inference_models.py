"""Model files: the ready-copies path of the fetch command, verification errors that say what is wrong,
and the load-time batch probe (NanoDet runs frame by frame, SSDLite batches)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from vap_inference.backends.onnxruntime import OrtBackend
from vap_inference.detector import Detector
from vap_inference.modelfiles import OrtDetectorRuntime
from vap_modelbuild.checks import verify_model
from vap_modelbuild.fetch import fetch_all
from vap_models import ModelVerificationError
from vap_models.catalogue import NANODET, SSDLITE, builtin
from vap_models.verify import conversion_record, sha256_file, verify_file
from vap_stack.models import main as models_cli

RUNTIME = OrtDetectorRuntime()


def test_fetch_verifies_ready_copies(models_dir: Path) -> None:
    results = fetch_all([NANODET.name, SSDLITE.name], models_dir, runtime=RUNTIME)
    assert [r.how for r in results] == ["ready copy", "ready copy"]
    # The reference conversion (../shared) or this machine's own conversion, known by its record.
    assert results[0].sha256 == sha256_file(models_dir / NANODET.filename)
    assert verify_file(NANODET, models_dir / NANODET.filename) == results[0].sha256


def test_a_conversion_made_here_is_known_by_its_record_and_nothing_else(tmp_path: Path) -> None:
    converted = tmp_path / NANODET.filename
    converted.write_bytes(b"not the reference bytes")
    with pytest.raises(ModelVerificationError, match="expected"):
        verify_file(NANODET, converted)
    conversion_record(converted).write_text(f"{sha256_file(converted)}  {converted.name}  converted\n")
    assert verify_file(NANODET, converted) == sha256_file(converted)
    converted.write_bytes(b"changed after the conversion")  # corrupt: the record no longer vouches for it
    with pytest.raises(ModelVerificationError, match="expected"):
        verify_file(NANODET, converted)


def test_fetch_from_a_directory_copies_and_verifies(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "cache"
    assert models_cli(["fetch", "--only", SSDLITE.name, "--from", str(models_dir), "--dest", str(dest)]) == 0
    assert (dest / SSDLITE.filename).read_bytes() == (models_dir / SSDLITE.filename).read_bytes()
    assert f"copied from {models_dir}" in capsys.readouterr().out
    assert models_cli(["list", "--dest", str(dest)]) == 0
    listing = capsys.readouterr().out
    copied = sha256_file(dest / SSDLITE.filename)
    assert f"{copied[:12]} ok" in listing and "missing" in listing  # nanodet was not copied


def test_list_shows_state(
    models_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAP_MODELS_DIR", str(models_dir))
    assert models_cli(["list"]) == 0
    out = capsys.readouterr().out
    assert f"{sha256_file(models_dir / NANODET.filename)[:12]} ok" in out and SSDLITE.name in out


def test_corrupt_file_gives_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / NANODET.filename
    bad.write_bytes(b"this is not an onnx model" * 100)
    with pytest.raises(ModelVerificationError, match=r"sha256 .* expected a4c29d541891.*fetch"):
        verify_file(NANODET, bad)
    with pytest.raises(ModelVerificationError, match="not a loadable ONNX model"):
        verify_model(NANODET, bad, RUNTIME, check_hash=False)
    # The CLI reports it and fails (it never overwrites a file it did not make without --force).
    assert models_cli(["fetch", "--only", NANODET.name, "--dest", str(tmp_path)]) == 1
    assert "expected a4c29d541891" in capsys.readouterr().err


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(ModelVerificationError, match=r"not found.*vap_stack\.models fetch"):
        verify_file(NANODET, tmp_path / "nope.onnx")
    empty = tmp_path / "empty.onnx"
    empty.touch()
    with pytest.raises(ModelVerificationError, match="is empty"):
        verify_file(NANODET, empty)


def test_a_model_of_the_wrong_family_is_refused(models_dir: Path, tmp_path: Path) -> None:
    """The SSDLite file presented as NanoDet: the signature check names the mismatch."""
    wrong = tmp_path / NANODET.filename
    shutil.copyfile(models_dir / SSDLITE.filename, wrong)
    with pytest.raises(ModelVerificationError, match="NanoDet input must be float32"):
        verify_model(NANODET, wrong, RUNTIME, check_hash=False)
    with pytest.raises(ModelVerificationError, match="SSDLite expects one uint8"):
        verify_model(SSDLITE, models_dir / NANODET.filename, RUNTIME, check_hash=False)
    with pytest.raises(ModelVerificationError, match="YOLO"):
        from vap_models.catalogue import yolo_spec

        verify_model(
            yolo_spec("x", models_dir / "mobilenetv2-embed-1280.onnx"), models_dir / NANODET.filename, RUNTIME
        )
    assert builtin("mobilenetv2-embed-1280").kind.value == "embedder"


def test_batch_probe(nanodet: Detector, ssdlite: Detector) -> None:
    assert nanodet.max_batch == 1 and "batch 1 only" in nanodet.batch_probe.reason
    assert ssdlite.max_batch == 4 and "matches" in ssdlite.batch_probe.reason
    assert nanodet.info().max_batch_size == 1 and ssdlite.info().max_batch_size == 4


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="the onnx package is not installed")
def test_batch_probe_catches_a_model_that_runs_batches_wrongly(models_dir: Path, tmp_path: Path) -> None:
    """NanoDet with its batch axis declared dynamic: ONNX Runtime then runs batch 4, but the TF.js graph's
    reshapes hard-code batch 1, so the outputs are wrong (README). The probe must find that out."""
    import onnx

    model = onnx.load(str(models_dir / NANODET.filename))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    for out in model.graph.output:
        out.type.tensor_type.shape.dim[0].dim_param = "N"
    path = tmp_path / "nanodet-dynamic.onnx"
    onnx.save(model, str(path))
    backend = OrtBackend(path, threads=2, batch_cap=4)
    assert backend.max_batch == 4  # the runtime would accept it...
    detector = Detector(NANODET, backend, max_batch=4).load()
    assert detector.max_batch == 1, detector.batch_probe.reason  # ...but the results are wrong
    assert "frame by frame" in detector.batch_probe.reason
    assert np.isfinite(detector.batch_probe.max_abs_diff)
