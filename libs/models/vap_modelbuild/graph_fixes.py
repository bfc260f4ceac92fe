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

import numpy as np
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
    return drop_unused(graph)


def drop_unused(graph: onnx.GraphProto) -> int:
    """Drop every node and initialiser the graph's outputs do not depend on; returns how many nodes."""
    needed = {o.name for o in graph.output}
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


# The TF OD API preprocessing map_fn as tf2onnx writes it: a Loop over the batch that gathers image i of the
# float input, transposes it to CHW and resizes it to the network size (scan output 0, [N, 3, H, W]) and
# stacks the network size once per image (scan output 1, [N, 3] int32 "true image shapes", read by the NMS
# subgraph only).
SSD_FLOAT_IMAGE = "ToFloat:0"
SSD_RESIZED_IMAGES = "Preprocessor/map/TensorArrayStack/TensorArrayGatherV3:0"
SSD_IMAGE_SHAPES = "Preprocessor/map/TensorArrayStack_1/TensorArrayGatherV3:0"


def _resize_loop_size(graph: onnx.GraphProto, loop: onnx.NodeProto) -> tuple[int, int]:
    """The (height, width) the preprocessing Loop resizes to, after checking that its body is the
    gather -> NHWC-to-NCHW transpose -> Resize -> squeeze that ``replace_ssd_resize_loop`` stands in for."""
    bodies = [a.g for a in loop.attribute if a.name == "body"]
    if not bodies:
        raise ValueError(f"Loop {loop.name} has no body")
    body = bodies[0]
    ops = [n.op_type for n in body.node]
    resizes = [n for n in body.node if n.op_type == "Resize"]
    gathers = [n for n in body.node if n.op_type == "Gather" and n.input[0] == SSD_FLOAT_IMAGE]
    perms = [_attribute(n, "perm", None) for n in body.node if n.op_type == "Transpose"]
    if len(resizes) != 1 or len(gathers) != 1 or perms != [[0, 3, 1, 2]] or "Squeeze" not in ops:
        raise ValueError(f"Loop {loop.name} is not the TF OD API resize map_fn (body: {ops})")
    resize = resizes[0]
    if _attribute(resize, "coordinate_transformation_mode", b"half_pixel") == b"tf_crop_and_resize":
        raise ValueError(f"Loop {loop.name}: a crop-and-resize is not the identity at the same size")
    constants = {t.name: numpy_helper.to_array(t) for t in [*graph.initializer, *body.initializer]}
    producers = {o: n for n in body.node for o in n.output}
    sizes = producers.get(resize.input[3]) if len(resize.input) > 3 else None
    if sizes is None or sizes.op_type != "Concat":
        raise ValueError(
            f"Loop {loop.name}: the Resize sizes are not a Concat of the batch/channel dims and HW"
        )
    hw = [constants[i].reshape(-1).tolist() for i in sizes.input if i in constants]
    if len(hw) != 1 or len(hw[0]) != 2:
        raise ValueError(f"Loop {loop.name}: no constant resize target in {list(sizes.input)}")
    return int(hw[0][0]), int(hw[0][1])


def replace_ssd_resize_loop(model: onnx.ModelProto) -> tuple[int, int]:
    """Replace the TF OD API preprocessing Loop (per image: resize to the network size) with one Transpose,
    and fix the image input to that size; returns the (height, width).

    A linear Resize to the size an image already has is the identity (every output pixel reads one input
    pixel with weight 1), and VAP's preprocessing always delivers the network size, so for the inputs the
    graph still accepts this is the same computation bit for bit, without ONNX Runtime running a subgraph
    per image (3-4% of SSDLite's CPU time at batch 1, one thread). Any other input size is now refused by
    ONNX Runtime instead of being resized."""
    graph = model.graph
    loops = [n for n in graph.node if n.op_type == "Loop" and SSD_RESIZED_IMAGES in n.output]
    if len(loops) != 1:
        raise ValueError(f"the graph has no Loop producing {SSD_RESIZED_IMAGES} (not a TF OD API SSD export)")
    loop = loops[0]
    height, width = _resize_loop_size(graph, loop)
    read = {name for node in graph.node for name in [*node.input, *_subgraph_inputs(node)]}
    read |= {o.name for o in graph.output}
    other = [o for o in loop.output if o not in (SSD_RESIZED_IMAGES, SSD_IMAGE_SHAPES) and o in read]
    if other:
        raise ValueError(f"Loop {loop.name}: its outputs {other} are read elsewhere")
    dims = graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4 or dims[3].dim_value != 3:
        raise ValueError(f"SSD image input {graph.input[0].name} is not [N, H, W, 3]")
    dims[1].Clear()
    dims[1].dim_value = height
    dims[2].Clear()
    dims[2].dim_value = width
    at = list(graph.node).index(loop)
    graph.node.remove(loop)
    nodes = [helper.make_node("Transpose", [SSD_FLOAT_IMAGE], [SSD_RESIZED_IMAGES], perm=[0, 3, 1, 2])]
    if SSD_IMAGE_SHAPES in loop.output:
        # [N, 3] copies of (H, W, 3): the batch size from the input's shape.
        prefix = "vap/true_image_shape"
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array([[height, width, 3]], np.int32), f"{prefix}/value"),
                numpy_helper.from_array(np.array([0], np.int64), f"{prefix}/zero"),
                numpy_helper.from_array(np.array([1], np.int64), f"{prefix}/one"),
            ]
        )
        nodes += [
            helper.make_node("Shape", [SSD_FLOAT_IMAGE], [f"{prefix}/shape"]),
            helper.make_node(
                "Slice", [f"{prefix}/shape", f"{prefix}/zero", f"{prefix}/one"], [f"{prefix}/batch"]
            ),
            helper.make_node("Concat", [f"{prefix}/batch", f"{prefix}/one"], [f"{prefix}/repeats"], axis=0),
            helper.make_node("Tile", [f"{prefix}/value", f"{prefix}/repeats"], [SSD_IMAGE_SHAPES]),
        ]
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)
    drop_unused(graph)
    return height, width
