"""Bearer-token authentication of VAP's gRPC APIs (ControlService, InferenceService): a server interceptor.

Every call needs ``authorization: Bearer <token>`` metadata matching one of the configured tokens (compared in
constant time, so response timing says nothing about how much of a guess was right). Health checks and server
reflection are exempt: load balancers and grpcurl-style tools must work without the token, and neither
reveals data. Refused calls end with UNAUTHENTICATED before the servicer runs.

Each service counts refused calls through the ``on_refused`` callback (e.g. ``vap_control_rpc_total``).
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from vap_common.logs import get_logger

_log = get_logger("vap.grpc_auth")

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

EXEMPT_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def load_or_create_token(path: Path) -> str:
    """The token in ``path``; a new random one written there (mode 0600) when the file does not exist."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        try:
            # O_EXCL: of two instances starting together, one writes and the other reads its token.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return _read_when_written(path)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        _log.info("generated an API token", path=str(path))
        return token
    if not token:
        raise ValueError(f"API token file {path} is empty")
    return token


def _read_when_written(path: Path) -> str:
    """The token another process is writing right now (created, maybe not yet filled)."""
    for _ in range(100):
        token = path.read_text().strip()
        if token:
            return token
        time.sleep(0.01)
    raise ValueError(f"API token file {path} is empty")


def _abort_handler(
    handler: grpc.RpcMethodHandler[_Req, _Resp], message: str
) -> grpc.RpcMethodHandler[_Req, _Resp]:
    """A handler of the same shape as ``handler`` that ends the call with UNAUTHENTICATED. (grpc.aio accepts
    a plain coroutine for streaming responses too: it would use context.write, and we only abort.)"""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    behaviour: Any = refuse
    deserializer = handler.request_deserializer
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(behaviour, deserializer, serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(behaviour, deserializer, serializer)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(behaviour, deserializer, serializer)
    return grpc.stream_stream_rpc_method_handler(behaviour, deserializer, serializer)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: Sequence[str], *, on_refused: Callable[[str], None] | None = None) -> None:
        if not tokens or any(not t for t in tokens):
            raise ValueError("at least one non-empty API token is required")
        self._tokens = [t.encode() for t in tokens]
        self._on_refused = on_refused  # called with the method name of every refused call

    def authorized(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        value = next((v for k, v in metadata or () if k == "authorization"), None)
        if value is None:
            return False
        raw = value.encode() if isinstance(value, str) else value
        scheme, _, token = raw.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        token = token.strip()
        # Compare against every token (no early exit) so timing does not reveal which one nearly matched.
        ok = False
        for candidate in self._tokens:
            ok |= hmac.compare_digest(token, candidate)
        return ok

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        if self.authorized(handler_call_details.invocation_metadata):
            return handler
        if self._on_refused is not None:
            self._on_refused(method.rsplit("/", 1)[-1])
        return _abort_handler(
            handler, "missing or invalid bearer token (metadata 'authorization: Bearer <token>')"
        )
