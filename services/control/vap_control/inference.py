"""Client of the inference service: Detect and ListModels are forwarded, model names are cached for
validating scenarios. Errors of the inference service keep their status code (e.g. INVALID_ARGUMENT for an
image that is not a JPEG/PNG, NOT_FOUND for an unknown model)."""

from __future__ import annotations

import time

import grpc

from vap_control.errors import ControlError, UnavailableError
from vap_proto.v1 import inference_pb2, inference_pb2_grpc


class RemoteError(ControlError):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class InferenceClient:
    def __init__(
        self,
        target: str | None,
        *,
        timeout_s: float,
        cache_s: float,
        max_message_bytes: int,
        token: str = "",
    ) -> None:
        self.target = target
        # The inference service takes the same bearer tokens as the control API (vap_common.grpc_auth).
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout_s
        self._cache_s = cache_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: inference_pb2_grpc.InferenceServiceAsyncStub | None = None
        self._max = max_message_bytes
        self._models: tuple[float, inference_pb2.ListModelsResponse] | None = None

    def _get_stub(self) -> inference_pb2_grpc.InferenceServiceAsyncStub:
        if self.target is None:
            raise UnavailableError("no inference service is configured (control setting inference_target)")
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                self.target,
                options=[
                    ("grpc.max_send_message_length", self._max),
                    ("grpc.max_receive_message_length", self._max),
                ],
            )
            self._stub = inference_pb2_grpc.InferenceServiceStub(self._channel)
        return self._stub

    async def detect(self, request: inference_pb2.DetectRequest) -> inference_pb2.DetectResponse:
        try:
            response: inference_pb2.DetectResponse = await self._get_stub().Detect(
                request, timeout=self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _remote(exc) from None
        return response

    async def list_models(self, *, fresh: bool = False) -> inference_pb2.ListModelsResponse:
        cached = self._models
        if not fresh and cached is not None and time.monotonic() - cached[0] < self._cache_s:
            return cached[1]
        try:
            response: inference_pb2.ListModelsResponse = await self._get_stub().ListModels(
                inference_pb2.ListModelsRequest(), timeout=min(self._timeout, 10.0), metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise _remote(exc) from None
        self._models = (time.monotonic(), response)
        return response

    async def model_names(self) -> set[str] | None:
        """Names a scenario may use; None when no inference service is configured (nothing to check)."""
        if self.target is None:
            return None
        models = await self.list_models()
        return {m.name for m in models.models}

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def _remote(exc: grpc.aio.AioRpcError) -> ControlError:
    code = exc.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return UnavailableError(f"inference service unavailable: {exc.details()}")
    return RemoteError(code, exc.details() or code.name)
