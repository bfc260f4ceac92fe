"""vap.v1.InferenceService over gRPC (asyncio): Detect on an uploaded JPEG/PNG, ListModels.

Detect shares each model's detector with the frame pipeline (its lock serialises the two), and at most
``concurrency`` requests run at once; the time spent waiting for both is reported as queue_wait_us.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeAlias

import grpc

from vap_inference import metrics
from vap_inference.backends.base import BackendError
from vap_inference.detector import Detections, Detector, Timings
from vap_inference.errors import InferenceError, UnknownModelError
from vap_inference.imageio import ImageError, decode_bgr, header_size
from vap_inference.manager import ModelManager
from vap_inference.settings import InferenceSettings
from vap_models import ModelVerificationError
from vap_proto.v1 import detection_pb2, inference_pb2, inference_pb2_grpc

# A string: grpc.aio.ServicerContext is generic only in the type stubs.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class InferenceApi(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, settings: InferenceSettings, manager: ModelManager, *, concurrency: int = 2) -> None:
        self.settings = settings
        self.manager = manager
        self._slots = asyncio.Semaphore(concurrency)
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="vap-detect")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _abort(self, context: Context, code: grpc.StatusCode, message: str) -> None:
        metrics.DETECT_REQUESTS.labels(code.name).inc()
        await context.abort(code, message)

    async def Detect(  # noqa: N802  (gRPC method name)
        self, request: inference_pb2.DetectRequest, context: Context
    ) -> inference_pb2.DetectResponse:
        s = self.settings
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        data = request.image
        if not data:
            await self._abort(context, invalid, "image is empty")
        if len(data) > s.max_image_bytes:
            await self._abort(
                context,
                invalid,
                f"image: {len(data)} bytes is over the limit of {s.max_image_bytes} bytes (max_image_bytes)",
            )
        try:
            width, height = header_size(data)
        except ImageError as exc:
            await self._abort(context, invalid, f"not a decodable JPEG/PNG image: {exc}")
            raise  # unreachable: abort raises
        if width * height > s.max_image_pixels or width == 0 or height == 0:
            await self._abort(
                context,
                invalid,
                f"image is {width}x{height} = {width * height} pixels; "
                f"the limit is {s.max_image_pixels} pixels",
            )
        if request.HasField("confidence_threshold") and not 0.0 <= request.confidence_threshold <= 1.0:
            await self._abort(context, invalid, "confidence_threshold must be in [0, 1]")
        try:
            name = self.manager.resolve(request.model)
        except UnknownModelError as exc:
            await self._abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
            raise
        loop = asyncio.get_running_loop()
        async with self._slots:
            try:
                detector = await loop.run_in_executor(self._executor, self.manager.get, name)
            except (InferenceError, ModelVerificationError, BackendError) as exc:
                await self._abort(
                    context, grpc.StatusCode.FAILED_PRECONDITION, f"model {name!r} cannot run: {exc}"
                )
                raise
            try:
                image = await loop.run_in_executor(self._executor, decode_bgr, data)
            except ImageError as exc:
                await self._abort(context, invalid, f"not a decodable JPEG/PNG image: {exc}")
                raise
            options = detector.options(
                confidence=request.confidence_threshold if request.HasField("confidence_threshold") else None,
                class_ids=list(request.class_ids),
                class_names=list(request.class_names),
                max_detections=request.max_detections or s.max_detections,
            )
            dets, timings = await loop.run_in_executor(self._executor, detector.detect_image, image, options)
        metrics.DETECT_REQUESTS.labels(grpc.StatusCode.OK.name).inc()
        return self._response(detector, dets, timings, image.shape[1], image.shape[0])

    @staticmethod
    def _response(
        detector: Detector, dets: Detections, timings: Timings, width: int, height: int
    ) -> inference_pb2.DetectResponse:
        stats = detection_pb2.InferenceStats(
            model_name=detector.name,
            batch_size=1,
            queue_wait_us=timings.queue_wait_us,
            preprocess_us=timings.preprocess_us,
            inference_us=timings.inference_us,
            postprocess_us=timings.postprocess_us,
            backend=detector.backend.backend_kind,
        )
        return inference_pb2.DetectResponse(
            detections=detector.to_proto(dets), image_width=width, image_height=height, stats=stats
        )

    async def ListModels(  # noqa: N802
        self, request: inference_pb2.ListModelsRequest, context: Context
    ) -> inference_pb2.ListModelsResponse:
        return inference_pb2.ListModelsResponse(models=self.manager.infos())


def add_to_server(server: grpc.aio.Server, api: InferenceApi) -> None:
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(api, server)
