"""The cheap paths of preprocessing and of the derived SSDLite must compute what the slow ones did: the
NanoDet normalisation table gives the arithmetic's floats bit for bit, the integer box filter is only used
where it fits and still matches an exact downscale, and the SSD graph without its resize Loop gives the
shipped graph's outputs bit for bit on real frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from vap_inference.backends.base import TensorInfo
from vap_inference.decoders import nanodet, ssdlite
from vap_inference.modelfiles import locate_model
from vap_inference.preprocess import InputFormat, Layout, Preprocessor, area_factor
from vap_inference.testing import bgr_to_planes, missing_model_reason, model_path, video_frames
from vap_modelbuild.graph_fixes import replace_ssd_resize_loop
from vap_models import ModelVerificationError
from vap_models.catalogue import NANODET, SSDLITE, SSDLITE_RAW
from vap_proto.v1.frame_pb2 import PixelFormat

I420 = PixelFormat.PIXEL_FORMAT_I420
VIDEO_720P = "vtest-720p25.mp4"


def test_area_factor_divides_the_source_or_is_one() -> None:
    assert area_factor(1920, 1080, (416, 234)) == 4
    assert area_factor(1280, 720, (416, 234)) == 2  # 3 would leave 1280 / 426 fractional
    assert area_factor(640, 360, (208, 117)) == 2
    assert area_factor(1001, 777, (416, 322)) == 1
    assert area_factor(768, 576, (416, 312)) == 1  # less than 2x smaller: linear only


@pytest.mark.parametrize("size", [(1280, 720), (1366, 768), (1002, 778)], ids=["720p", "wxga", "odd-chroma"])
def test_downscaled_i420_frames_stay_close_to_an_exact_downscale(size: tuple[int, int]) -> None:
    w, h = size
    frame = np.asarray(
        cv2.resize(video_frames((200,), VIDEO_720P)[200], (w, h), interpolation=cv2.INTER_AREA), np.uint8
    )
    pre = Preprocessor(InputFormat(416, 416, Layout.NHWC_UINT8, rgb=False), 1)
    lb = pre.from_planes(0, tuple(bgr_to_planes(frame, I420)), I420, w, h)
    got = pre.batch[0, : lb.scaled_height, : lb.scaled_width].astype(np.int16)
    full = cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420), cv2.COLOR_YUV2BGR_I420)
    reference = cv2.resize(full, (lb.scaled_width, lb.scaled_height), interpolation=cv2.INTER_AREA)
    # A real frame has sharp edges; the two-stage resize softens them a little differently.
    assert np.abs(got - reference.astype(np.int16)).mean() < 3.0


def test_nanodet_input_is_the_normalisation_arithmetic_bit_for_bit() -> None:
    fmt = nanodet.input_format(416, 416)
    raw = InputFormat(416, 416, Layout.NHWC_UINT8, rgb=fmt.rgb, keep_ratio=True, pad_value=fmt.pad_value)
    frame = video_frames((200,), VIDEO_720P)[200]
    planes = tuple(bgr_to_planes(frame, I420))
    pre, canvas = Preprocessor(fmt, 2), Preprocessor(raw, 1)
    pre.from_planes(1, planes, I420, 1280, 720)
    canvas.from_planes(0, planes, I420, 1280, 720)
    mean = np.asarray(fmt.mean, np.float32).reshape(3, 1, 1)
    scale = np.asarray(fmt.scale, np.float32).reshape(3, 1, 1)
    expect = (canvas.batch[0].transpose(2, 0, 1).astype(np.float32) - mean) * scale
    got = pre.inputs(2)[1]
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got.view(np.uint32), expect.view(np.uint32))


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def test_ssd_graph_without_its_resize_loop_gives_the_same_outputs() -> None:
    if reason := missing_model_reason(SSDLITE):
        pytest.skip(reason)
    shipped = onnx.load(str(model_path(SSDLITE)))
    fixed = onnx.load(str(model_path(SSDLITE)))
    assert replace_ssd_resize_loop(fixed) == (300, 300)
    assert [n.op_type for n in fixed.graph.node].count("Loop") == 1  # only the NMS one is left
    a, b = _session(shipped), _session(fixed)
    pre = Preprocessor(ssdlite.input_format(300, 300), 2)
    frames = video_frames((0, 200), VIDEO_720P)
    for k, frame in enumerate(frames.values()):
        pre.from_planes(k, tuple(bgr_to_planes(frame, I420)), I420, 1280, 720)
    for batch in (pre.inputs(1), pre.inputs(2)):
        name = a.get_inputs()[0].name
        for x, y in zip(a.run(None, {name: batch}), b.run(None, {name: batch}), strict=True):
            assert np.array_equal(x, y)
    assert np.asarray(a.run(["num_detections:0"], {name: pre.inputs(1)})[0])[0] >= 3  # people found
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        b.run(None, {name: np.zeros((1, 320, 320, 3), np.uint8)})  # no silent resize any more


def test_the_fix_refuses_graphs_without_the_ssd_resize_loop() -> None:
    if reason := missing_model_reason(NANODET):
        pytest.skip(reason)
    with pytest.raises(ValueError, match="no Loop producing"):
        replace_ssd_resize_loop(onnx.load(str(model_path(NANODET))))


def test_derived_ssdlite_runs_no_loops(models_dir: Path) -> None:
    path, _ = locate_model(SSDLITE_RAW, models_dir)
    graph = onnx.load(str(path)).graph
    assert "Loop" not in {n.op_type for n in graph.node}
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [300, 300, 3]


def test_ssdlite_decoder_refuses_an_input_fixed_to_another_size() -> None:
    image = TensorInfo("image_tensor:0", (None, 320, 320, 3), np.dtype(np.uint8))
    with pytest.raises(ModelVerificationError, match="another size"):
        ssdlite.SsdLiteDecoder.bind([image], [], 300, 300, 1)
