"""Errors the control service reports to API callers, each with its gRPC status code.

Raised anywhere below the API layer; ``grpc_api`` turns them into the status. Messages are shown to clients:
they never contain credentials (callers pass redacted text).
"""

from __future__ import annotations

import grpc


class ControlError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(ControlError):
    """A request field is wrong; the message starts with the field's path (``scenario.source.url: ...``)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFoundError(ControlError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPreconditionError(ControlError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(ControlError):
    code = grpc.StatusCode.ABORTED


class ResourceExhaustedError(ControlError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(ControlError):
    code = grpc.StatusCode.UNAVAILABLE
