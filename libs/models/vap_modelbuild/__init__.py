"""Model building, above the model library (vap_models): reproducing the shipped models from their registry
packages (fetch), deriving models from them (derive: INT8 quantisation, graph fixes) and the fetch/list
command's body (cli). What needs a detector run as the inference service runs it is passed in as a
``DetectorRuntime``; nothing here imports a service."""

from vap_modelbuild.checks import DetectorRuntime, verify_model

__all__ = ["DetectorRuntime", "verify_model"]
