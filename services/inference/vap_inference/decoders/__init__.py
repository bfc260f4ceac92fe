"""Per model family: the input format the network wants and the decoding of its outputs into boxes.

``bind(spec, inputs, outputs, metadata)`` checks a model's signature against its family (raising
ModelVerificationError with what is wrong) and returns the completed spec, the input format and a decoder.
"""

from __future__ import annotations

from vap_inference.backends.base import TensorInfo
from vap_inference.decoders import nanodet, ssdlite, yolo
from vap_inference.decoders.base import Decoder, RawDetections
from vap_inference.preprocess import InputFormat
from vap_models import ModelSpec, ModelVerificationError
from vap_proto.v1 import inference_pb2

__all__ = ["Decoder", "RawDetections", "bind"]


def bind(
    spec: ModelSpec, inputs: list[TensorInfo], outputs: list[TensorInfo], metadata: dict[str, str]
) -> tuple[ModelSpec, InputFormat, Decoder]:
    family = spec.family
    if family == inference_pb2.MODEL_FAMILY_NANODET:
        w, h = spec.input_width, spec.input_height
        dec: Decoder = nanodet.NanoDetDecoder.bind(inputs, outputs, w, h, len(spec.class_names))
        # Rectangular inputs where the runtime leaves height and width free (OrtBackend flexible_input);
        # a TensorRT engine pins them, and then every frame is letterboxed to the full square.
        image = inputs[0] if inputs else None
        free = (
            image is not None and len(image.shape) == 4 and image.fixed(2) is None and image.fixed(3) is None
        )
        stride = spec.rect_stride if free else 0
        return spec, nanodet.input_format(w, h, stride), dec
    if family == inference_pb2.MODEL_FAMILY_SSDLITE:
        w, h = spec.input_width, spec.input_height
        dec = ssdlite.SsdLiteDecoder.bind(inputs, outputs, w, h, len(spec.class_names))
        return spec, ssdlite.input_format(w, h), dec
    if family == inference_pb2.MODEL_FAMILY_YOLO:
        w, h = yolo.input_size(inputs, metadata)
        from_meta = yolo.metadata_names(metadata)
        nc = yolo.num_classes(outputs, len(spec.class_names) or (len(from_meta) if from_meta else None))
        names = spec.class_names or yolo.class_names(metadata, nc)
        resolved = spec.with_input(w, h, names)
        return resolved, yolo.input_format(w, h), yolo.YoloDecoder.bind(outputs, len(names))
    raise ModelVerificationError(f"model {spec.name!r} is not a detector of a known family")
