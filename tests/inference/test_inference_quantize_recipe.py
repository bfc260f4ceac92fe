"""The INT8 recipe's graph shaping (vap_modelbuild/quantize.py): the rewrites give the float model's outputs,
and the built model has the shape the speed depends on (image convolution in float, shared Concat ranges)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from vap_modelbuild import quantize


def _model(
    nodes: list[onnx.NodeProto], outputs: list[str], constants: dict[str, np.ndarray]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "recipe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 20, 20])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    # IR 8: what ONNX Runtime 1.18 (the oldest supported) reads.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(None, {"x": x})]


def _stem(extra_user: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("LeakyRelu", ["c"], ["a"], name="act", alpha=0.1),
        helper.make_node(
            "MaxPool", ["a"], ["y"], name="pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]
        ),
    ]
    outputs = ["y"]
    if extra_user:
        nodes.append(helper.make_node("Neg", ["a"], ["z"], name="neg"))
        outputs.append("z")
    constants = {
        "w": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
        "b": rng.normal(size=8).astype(np.float32),
    }
    return _model(nodes, outputs, constants)


def test_the_image_conv_pools_before_its_activation_with_the_same_outputs() -> None:
    x = np.random.default_rng(1).normal(size=(1, 3, 20, 20)).astype(np.float32)
    model = _stem(extra_user=False)
    before = _run(model, x)
    assert quantize.pool_before_image_activation(model) == ["conv", "pool", "act"]
    assert [n.op_type for n in model.graph.node] == ["Conv", "MaxPool", "LeakyRelu"]
    np.testing.assert_allclose(_run(model, x)[0], before[0], rtol=1e-6, atol=1e-6)


def test_an_activation_read_elsewhere_is_not_moved() -> None:
    model = _stem(extra_user=True)
    assert quantize.pool_before_image_activation(model) == []
    assert [n.op_type for n in model.graph.node] == ["Conv", "LeakyRelu", "MaxPool", "Neg"]


def test_a_head_conv_is_padded_to_whole_channel_groups_with_the_same_split_outputs() -> None:
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="head"),
        helper.make_node("Split", ["c", "sizes"], ["cls", "reg"], name="split", axis=1),
    ]
    constants: dict[str, np.ndarray] = {
        "w": rng.normal(size=(12, 3, 1, 1)).astype(np.float32),
        "b": rng.normal(size=12).astype(np.float32),
        "sizes": np.array([7, 5], np.int64),
    }
    model = _model(nodes, ["cls", "reg"], constants)
    x = rng.normal(size=(1, 3, 20, 20)).astype(np.float32)
    before = _run(model, x)
    assert quantize.pad_split_head_channels(model) == 1
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert weights["w"].shape[0] == 16 and not weights["w"][12:].any() and not weights["b"][12:].any()
    after = _run(model, x)
    for old, new in zip(before, after, strict=True):
        np.testing.assert_allclose(new, old, rtol=1e-6, atol=1e-6)
    assert quantize.pad_split_head_channels(model) == 0  # already whole groups


def test_the_int8_model_runs_its_image_conv_in_float_and_shares_concat_ranges(
    nanodet_int8_path: Path,
) -> None:
    model = onnx.load(str(nanodet_int8_path))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    image_conv = next(n for n in graph.node if n.op_type == "Conv" and n.input[0] == graph.input[0].name)
    assert image_conv.input[1] in constants  # float weights, no DequantizeLinear in front

    def scale(tensor: str) -> float:
        node = producer[tensor]
        assert node.op_type == "DequantizeLinear", node.op_type
        return float(constants[node.input[1]])

    concats = [n for n in graph.node if n.op_type == "Concat"]
    assert concats
    for concat in concats:
        (quantizer,) = [
            n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == concat.output[0]
        ]
        assert {scale(t) for t in concat.input} == {float(constants[quantizer.input[1]])}, concat.name
