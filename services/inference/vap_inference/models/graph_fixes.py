"""Surgery on converter leftovers in ONNX graphs, before quantisation.

tf2onnx writes TensorFlow's SAME max-pooling as an explicit ``Pad`` with the constant ``-inf`` followed by
an unpadded ``MaxPool``. ONNX Runtime runs that fine in float, but the quantiser calibrates the padded
tensor, sees a range of (-inf, x) and writes an infinite scale: the quantised model then outputs nothing at
all (measured: 0 of 131 people found). ``MaxPool``'s own ``pads`` attribute means exactly that padding
(padded cells never win the max), so the pair is folded into one ``MaxPool``.

Pads in front of convolutions are left alone: ONNX Runtime's own optimiser folds those into ``Conv``
(``quant_pre_process`` runs it).
"""

from __future__ import annotations

import math

import onnx
from onnx import helper, numpy_helper


def _attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def fold_neg_inf_pads_into_maxpool(model: onnx.ModelProto) -> int:
    """Fold every ``Pad(constant -inf, spatial only) -> MaxPool`` pair into the MaxPool; returns how many.

    Only when the Pad's output feeds nothing but that MaxPool and the MaxPool has no padding of its own.
    """
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    folded: list[onnx.NodeProto] = []
    for pad in graph.node:
        if pad.op_type != "Pad" or len(pad.input) < 3 or pad.input[1] not in constants:
            continue
        consumers = users.get(pad.output[0], [])
        if len(consumers) != 1 or consumers[0].op_type != "MaxPool":
            continue
        pool = consumers[0]
        if _attribute(pad, "mode", b"constant") != b"constant" or pad.input[2] not in constants:
            continue
        value = float(constants[pad.input[2]].reshape(-1)[0])
        if not (math.isinf(value) and value < 0):
            continue
        pads = [int(p) for p in constants[pad.input[1]].reshape(-1)]
        rank = len(pads) // 2
        # NCHW: nothing may be padded on the batch or channel axes.
        if rank < 3 or any(pads[i] or pads[rank + i] for i in (0, 1)):
            continue
        if _attribute(pool, "pads", None) is not None or _attribute(pool, "auto_pad", b"NOTSET") != b"NOTSET":
            continue
        pool.attribute.append(helper.make_attribute("pads", pads[2:rank] + pads[rank + 2 :]))
        pool.input[0] = pad.input[0]
        folded.append(pad)
    for node in folded:
        graph.node.remove(node)
    return len(folded)


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (Loop/If bodies) read from the enclosing graph, or might."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in graphs:
            for inner in sub.node:
                names.update(inner.input)
                names |= _subgraph_inputs(inner)
    return names


def cut_to_outputs(model: onnx.ModelProto, outputs: dict[str, str]) -> int:
    """Make the tensors ``outputs`` (new output name -> existing tensor name) the graph's only outputs and
    drop every node and initialiser they do not depend on; returns how many nodes were dropped."""
    graph = model.graph
    produced = {name for node in graph.node for name in node.output}
    missing = sorted(t for t in outputs.values() if t not in produced)
    if missing:
        raise ValueError(f"the graph has no tensors {missing} to cut at (not the expected converter output)")
    for new, tensor in outputs.items():
        graph.node.append(helper.make_node("Identity", [tensor], [new], name=f"cut/{new}"))
    del graph.output[:]
    graph.output.extend(helper.make_empty_tensor_value_info(new) for new in outputs)
    needed = set(outputs)
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
            needed |= _subgraph_inputs(node)
    dropped = len(graph.node) - len(kept)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initialisers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initialisers)
    return dropped


# TF Object Detection API (SSD) tensors, as tf2onnx names them: the boxes decoded from the anchors by the
# graph's own box coder ([N, anchors, 4], ymin/xmin/ymax/xmax in 0..1) and the sigmoid class scores
# ([N, anchors, 1 + classes], background first) just before BatchMultiClassNonMaxSuppression.
SSD_DECODED_BOXES = "Postprocessor/Reshape_2:0"
SSD_SCORES = "Postprocessor/convert_scores:0"
SSD_RAW_OUTPUTS = {"raw_detection_boxes": SSD_DECODED_BOXES, "raw_detection_scores": SSD_SCORES}


def cut_ssd_postprocessing(model: onnx.ModelProto) -> int:
    """Drop the TF OD API's NMS subgraph (a Loop over the batch with NonMaxSuppression, TopK, gathers):
    about 14% of SSDLite's CPU time, for work that VAP's class-aware NMS does again anyway. The anchors and
    the box coder stay in the graph (its constants), so nothing about them is re-derived here. The outputs
    keep the names newer TF OD API exports give these tensors."""
    dropped = cut_to_outputs(model, SSD_RAW_OUTPUTS)
    del model.graph.output[:]
    model.graph.output.extend(
        [
            helper.make_tensor_value_info("raw_detection_boxes", onnx.TensorProto.FLOAT, ["N", "anchors", 4]),
            helper.make_tensor_value_info(
                "raw_detection_scores", onnx.TensorProto.FLOAT, ["N", "anchors", "classes"]
            ),
        ]
    )
    return dropped
