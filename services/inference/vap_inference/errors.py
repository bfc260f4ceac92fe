"""Errors of the inference service; messages are written for the operator who has to fix the cause.

A model file that does not fit its spec raises the model library's ``vap_models.ModelVerificationError``.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base of the errors below."""


class UnknownModelError(InferenceError, KeyError):
    """A model name that is neither shipped nor configured."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown model"
