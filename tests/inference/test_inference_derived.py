"""Derived models: the INT8 NanoDet finds the same people as the float model, is built reproducibly by the
fetch command into a cache keyed by the base model's hash, and is refused at load when it was tampered with
or built from another base. Plus the graph surgery the quantiser needs and the box matching it is judged by.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from vap_inference.backends.onnxruntime import OrtBackend
from vap_inference.detector import Detector
from vap_inference.modelfiles import locate_model
from vap_modelbuild import derive, quantize
from vap_modelbuild.graph_fixes import cut_to_outputs, fold_neg_inf_pads_into_maxpool
from vap_models import ModelVerificationError, locate
from vap_models.catalogue import NANODET_INT8, SSDLITE_RAW
from vap_models.verify import sha256_file
from vap_stack.models import main as models_cli

# Neither calibration (5 + 40k) nor the build's own agreement check (25 + 40k) used these.
HELD_OUT_FRAMES = tuple(range(15, 795, 40))


def person_boxes(detector: Detector, images: list[np.ndarray]) -> list[np.ndarray]:
    opts = detector.options(class_names=["person"])
    return [detector.detect_image(image, opts)[0].boxes for image in images]


def test_int8_finds_the_same_people_as_the_float_model(nanodet: Detector, nanodet_int8: Detector) -> None:
    images = list(quantize.video_frames(HELD_OUT_FRAMES).values())
    reference = person_boxes(nanodet, images)
    agreement = derive.match_boxes(reference, person_boxes(nanodet_int8, images))
    assert agreement.reference >= 60, "vtest has 3-10 people per frame"
    assert agreement.ratio >= 0.9, agreement
    assert agreement.extra <= 0.1 * agreement.reference, agreement
    assert agreement.mean_iou >= 0.85, agreement


def test_int8_finds_people_on_frame_200_and_none_on_blank(
    nanodet_int8: Detector, frames: dict[int, np.ndarray]
) -> None:
    dets, _ = nanodet_int8.detect_image(frames[200], nanodet_int8.options(class_names=["person"]))
    assert len(dets) >= 4
    for value in (0, 128, 255):
        blank, _ = nanodet_int8.detect_image(np.full((576, 768, 3), value, np.uint8))
        assert len(blank) == 0, f"detections on a blank frame of value {value}"
    assert nanodet_int8.max_batch == 1  # the base model's fixed batch carries over


def test_ssdlite_without_its_nms_subgraph_finds_the_same_people(ssdlite: Detector, models_dir: Path) -> None:
    path, _ = locate_model(SSDLITE_RAW, models_dir)
    raw = Detector(SSDLITE_RAW, OrtBackend(path, threads=2, batch_cap=4), max_batch=4).load()
    try:
        assert raw.max_batch == 4, raw.batch_probe.reason  # still batches
        assert {o.name for o in raw.backend.outputs} == {"raw_detection_boxes", "raw_detection_scores"}
        images = list(quantize.video_frames(HELD_OUT_FRAMES[::2]).values())
        agreement = derive.match_boxes(person_boxes(ssdlite, images), person_boxes(raw, images))
    finally:
        raw.close()
    # The same network and box coder; only the suppression moved out of the graph.
    assert agreement.reference >= 20 and agreement.ratio >= 0.95 and agreement.extra <= 2, agreement
    assert agreement.mean_iou >= 0.99, agreement


def _copy_build(source: Path, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, directory / source.name)
    shutil.copyfile(source.with_suffix(".json"), directory / source.with_suffix(".json").name)
    return directory / source.name


def test_a_tampered_or_stale_build_is_refused_at_load(
    nanodet_int8_path: Path, models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(locate.DERIVED_ENV, str(tmp_path))
    copy = _copy_build(nanodet_int8_path, tmp_path)
    path, digest = locate.locate_model(NANODET_INT8, models_dir)
    assert path == copy and digest == sha256_file(nanodet_int8_path)

    record_path = copy.with_suffix(".json")
    record = json.loads(record_path.read_text())
    assert record["base"] == "nanodet-m-416" and record["agreement"]["ratio"] >= derive.MIN_AGREEMENT

    record_path.write_text(json.dumps({**record, "base_sha256": "0" * 64}))
    with pytest.raises(ModelVerificationError, match="was built from base 000000000000"):
        locate.locate_model(NANODET_INT8, models_dir)

    record_path.write_text(json.dumps(record))
    with copy.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelVerificationError, match=r"modified or corrupt.*fetch --force"):
        locate.locate_model(NANODET_INT8, models_dir)

    copy.unlink()
    with pytest.raises(ModelVerificationError, match=r"not built yet.*fetch --only nanodet-m-416-int8"):
        locate.locate_model(NANODET_INT8, models_dir)


def test_fetch_builds_the_int8_model_reproducibly(
    nanodet_int8_path: Path,
    models_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A fresh build (another cache directory) is byte-identical to the cached one. --force rebuilds the
    derived model only: the base it brings along is verified as it is, never converted again."""
    monkeypatch.setenv(locate.DERIVED_ENV, str(tmp_path))
    assert models_cli(["fetch", "--force", "--only", NANODET_INT8.name, "--dest", str(models_dir)]) == 0
    out = capsys.readouterr().out
    assert "nanodet-m-416 " in out and "ready copy" in out
    assert "built (int8 of nanodet-m-416)" in out
    built = locate.cache_path(NANODET_INT8, sha256_file(models_dir / "nanodet-m-416.onnx"))
    assert built.parent == tmp_path
    assert sha256_file(built) == sha256_file(nanodet_int8_path)
    assert models_cli(["list", "--dest", str(models_dir)]) == 0
    assert f"built, sha256 {sha256_file(built)[:12]}" in capsys.readouterr().out


def _pad_pool_model(pad_value: float) -> onnx.ModelProto:
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    value = numpy_helper.from_array(np.array(pad_value, np.float32), "value")
    graph = helper.make_graph(
        [
            helper.make_node("Pad", ["x", "pads", "value"], ["padded"]),
            helper.make_node("MaxPool", ["padded"], ["y"], kernel_shape=[3, 3], strides=[2, 2]),
        ],
        "pad_pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [pads, value],
    )
    # IR 8: what ONNX Runtime 1.18 (the oldest supported) reads; onnx would write its newest.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


@settings(max_examples=15, deadline=None)
@given(size=st.integers(3, 12), seed=st.integers(0, 2**16))
def test_a_neg_inf_pad_folds_into_maxpool_with_the_same_outputs(size: int, seed: int) -> None:
    x = np.random.default_rng(seed).normal(-1.0, 1.0, (1, 2, size, size)).astype(np.float32)
    model = _pad_pool_model(-np.inf)
    before = _run(model, x)
    assert fold_neg_inf_pads_into_maxpool(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MaxPool"]
    np.testing.assert_array_equal(_run(model, x), before)


def test_a_zero_pad_is_not_folded() -> None:
    """Zero padding changes the max of negative inputs: MaxPool's own padding would not."""
    model = _pad_pool_model(0.0)
    assert fold_neg_inf_pads_into_maxpool(model) == 0
    assert [n.op_type for n in model.graph.node] == ["Pad", "MaxPool"]


def test_cutting_at_a_tensor_the_graph_lacks_is_refused() -> None:
    model = _pad_pool_model(-np.inf)
    with pytest.raises(ValueError, match=r"no tensors \['nope'\]"):
        cut_to_outputs(model, {"out": "nope"})
    assert cut_to_outputs(model, {"out": "padded"}) == 1  # MaxPool dropped, Pad kept
    assert [n.op_type for n in model.graph.node] == ["Pad", "Identity"]
    assert {t.name for t in model.graph.initializer} == {"pads", "value"}


def test_box_matching_is_one_to_one() -> None:
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    shifted = a + np.float32(1)  # IoU 81/119 = 0.68 each
    agreement = derive.match_boxes([a, a], [shifted, shifted[:1]])
    assert (agreement.matched, agreement.reference, agreement.extra) == (3, 4, 0)
    # Two candidates on one reference box: one matches, the other is extra.
    agreement = derive.match_boxes([a[:1]], [np.concatenate([a[:1], shifted[:1]])])
    assert (agreement.matched, agreement.extra, agreement.mean_iou) == (1, 1, 1.0)
    # Nothing to find, nothing found; far-off boxes do not match.
    assert derive.match_boxes([a[:0]], [a[:0]]).ratio == 1.0
    assert derive.match_boxes([a], [a + np.float32(50)]).matched == 0
