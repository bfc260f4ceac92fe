"""Errors of the inference service; messages are written for the operator who has to fix the cause."""

from __future__ import annotations


class InferenceError(Exception):
    """Base of the errors below."""


class ModelVerificationError(InferenceError):
    """A model file that does not fit its spec: missing, corrupt, wrong hash, wrong inputs/outputs, or a
    probe inference that failed or gave outputs of the wrong shape."""


class UnknownModelError(InferenceError, KeyError):
    """A model name that is neither shipped nor configured."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown model"
