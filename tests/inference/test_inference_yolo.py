"""The YOLOv8/YOLO11 decoder: synthetic outputs (always), and a real Ultralytics ONNX export built from
its YAML with random weights (shapes and decoding only, never accuracy), made and read back by Ultralytics
in its own cached environment (tests/inference/ultralytics_env.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import ultralytics_env

from vap_inference.backends.base import TensorInfo
from vap_inference.backends.onnxruntime import OrtBackend
from vap_inference.decoders import yolo
from vap_inference.detector import Detector
from vap_models import ModelVerificationError
from vap_models.catalogue import yolo_spec


def test_decode_synthetic_output() -> None:
    nc, anchors = 3, 6
    out = np.zeros((2, 4 + nc, anchors), np.float32)
    # Slot 1, anchor 2: a class-1 box centred at (100, 50), 40x20, score 0.9; anchor 4: class 2 at 0.3.
    out[1, :4, 2] = [100, 50, 40, 20]
    out[1, 4 + 1, 2] = 0.9
    out[1, :4, 4] = [10, 10, 4, 4]
    out[1, 4 + 2, 4] = 0.3
    dec = yolo.YoloDecoder(nc)
    dec.check_outputs([out], 2)
    raw = dec.decode([out], 1, 0.25, None)
    order = np.argsort(-raw.scores)
    np.testing.assert_allclose(raw.boxes[order[0]], [80, 40, 120, 60])
    assert raw.class_ids[order].tolist() == [1, 2]
    assert len(dec.decode([out], 1, 0.5, None)) == 1
    assert len(dec.decode([out], 1, 0.25, np.array([2]))) == 1  # class filter before NMS
    assert len(dec.decode([out], 0, 0.25, None)) == 0
    with pytest.raises(ModelVerificationError):
        dec.check_outputs([out[:, :5]], 2)


def test_signature_errors_are_clear() -> None:
    end2end = [TensorInfo("output0", (1, 300, 6), np.dtype(np.float32))]
    with pytest.raises(ModelVerificationError, match="end-to-end"):
        yolo.num_classes(end2end)
    with pytest.raises(ModelVerificationError, match="one float32"):
        yolo.input_size([TensorInfo("images", (1, 640, 640, 3), np.dtype(np.uint8))], {})
    assert yolo.input_size(
        [TensorInfo("images", ("b", 3, "h", "w"), np.dtype(np.float32))], {"imgsz": "[480, 640]"}
    ) == (640, 480)
    assert yolo.class_names({"names": "{0: 'cat', 1: 'dog'}"}, 2) == ("cat", "dog")
    assert len(yolo.class_names({}, 80)) == 80 and yolo.class_names({}, 2) == ("class_0", "class_1")


EXPORT_SCRIPT = """
import torch
from ultralytics import YOLO

torch.manual_seed(0)
# Built from the YAML: random weights, no download. Dynamic batch and a non-default size.
model = YOLO("yolov8n.yaml")
# The fresh head's class bias (log(5 / nc / 6400)) makes every score ~1e-4 whatever the input; zeroing it
# lets the random features show through, so there are boxes to decode.
for module in model.model.modules():
    if type(module).__name__ == "Detect":
        for branch in module.cv3:
            torch.nn.init.zeros_(branch[-1].bias)
model.export(format="onnx", imgsz=320, dynamic=True, simplify=False, opset=17)
"""

# Ultralytics' own reading of one output row set: boxes by its xywh2xyxy, best class and its score.
CONVERT_SCRIPT = """
import sys
import numpy as np
import torch
from ultralytics.utils.ops import xywh2xyxy

out = np.load(sys.argv[1])
pred = torch.from_numpy(out.T.copy())
conf, cls = pred[:, 4:].max(dim=1)
np.savez(sys.argv[2], boxes=xywh2xyxy(pred[:, :4]).numpy(), conf=conf.numpy(), cls=cls.numpy())
"""


@pytest.fixture(scope="module")
def yolo_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("yolo")
    ultralytics_env.run(EXPORT_SCRIPT, cwd=work)
    return work / "yolov8n.onnx"


def ultralytics_reading(raw_out: np.ndarray, work: Path) -> dict[str, np.ndarray]:
    np.save(work / "out.npy", raw_out)
    ultralytics_env.run(CONVERT_SCRIPT, str(work / "out.npy"), str(work / "theirs.npz"), cwd=work)
    with np.load(work / "theirs.npz") as theirs:
        return {k: theirs[k] for k in ("boxes", "conf", "cls")}


def test_ultralytics_export_loads_decodes_and_batches(yolo_export: Path, tmp_path: Path) -> None:
    backend = OrtBackend(yolo_export, threads=2, batch_cap=4)
    # A dynamic export names every output axis: the class count comes from Ultralytics' names metadata.
    assert backend.outputs[0].fixed(1) is None
    detector = Detector(yolo_spec("yolov8n-random", yolo_export), backend, max_batch=4).load()
    assert (detector.input_format.width, detector.input_format.height) == (320, 320)  # dynamic: from imgsz
    assert len(detector.class_names) == 80 and isinstance(detector.decoder, yolo.YoloDecoder)
    assert detector.decoder.num_classes == 80
    assert detector.max_batch == 4, detector.batch_probe.reason  # a dynamic-batch export batches correctly
    image = np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    with detector.lock:
        lb = detector.preprocessor.from_bgr(0, image)
        outputs = detector.run(1)
    raw_out = outputs[0]
    assert raw_out.shape == (1, 84, 2100)  # 40x40 + 20x20 + 10x10 anchors at 320
    # Decoding against Ultralytics' own box conversion on the same tensor.
    threshold = float(np.quantile(raw_out[0, 4:].max(axis=0), 0.98))  # ~40 candidates from random weights
    raw = detector.decoder.decode(outputs, 0, threshold, None)
    assert 10 <= len(raw) <= 200
    theirs = ultralytics_reading(raw_out[0], tmp_path)
    keep = theirs["conf"] > threshold
    expected = theirs["boxes"][keep]
    order_ours, order_theirs = (
        np.argsort(raw.scores, kind="stable"),
        np.argsort(theirs["conf"][keep], kind="stable"),
    )
    np.testing.assert_allclose(raw.boxes[order_ours], expected[order_theirs], rtol=1e-5, atol=1e-3)
    assert raw.class_ids[order_ours].tolist() == theirs["cls"][keep][order_theirs].tolist()
    # And the whole path maps boxes into the image.
    dets = detector.postprocess(outputs, 0, lb, detector.options(confidence=threshold))
    assert len(dets) > 0
    assert np.all(dets.boxes[:, [0, 2]] <= 320) and np.all(dets.boxes[:, [1, 3]] <= 240)
