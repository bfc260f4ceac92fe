"""Malformed request bytes end a call with INVALID_ARGUMENT instead of UNKNOWN.

grpc-python turns an exception in a method's request deserializer (a protobuf DecodeError for bytes that are
not the request message) into UNKNOWN "Unexpected DecodeError", which reads like a server bug. This
interceptor wraps the deserializer of every unary-request method: undecodable bytes become a marker, and
the method's behaviour ends such a call with INVALID_ARGUMENT before the servicer sees it. ServiceRuntime
installs it innermost, after a service's own interceptors (authentication still comes first).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc


class _Undecodable:
    """Stands for a request whose bytes did not parse; carries the parser's message."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _guarded(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # any parse failure is the client's malformed input
            return _Undecodable(f"{type(exc).__name__}: {exc}")

    return deserialize


async def _refuse(request: _Undecodable, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request message ({request.reason})")


def _unary(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Undecodable):
            await _refuse(request, context)
        return await behaviour(request, context)

    return call


def _streaming(behaviour: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        if isinstance(request, _Undecodable):
            await _refuse(request, context)
        result = behaviour(request, context)
        if inspect.isasyncgen(result):
            async for item in result:
                yield item
        else:  # a coroutine that writes with context.write
            await result

    return call


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        deserializer = _guarded(handler.request_deserializer)
        serializer = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary), deserializer, serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream), deserializer, serializer
            )
        return handler
