"""Appearance re-identification: embeddings of person crops (ONNX MobileNetV2, HSV histogram fallback), the
per-site gallery of global identities, and the per-channel manager that spends a bounded crop budget per
frame in a worker thread so tracking never waits for it."""

from vap_tracker.reid.embedder import (
    Embedder,
    FusedEmbedder,
    HsvHistogramEmbedder,
    OnnxEmbedder,
    make_embedder,
)
from vap_tracker.reid.gallery import SiteGallery
from vap_tracker.reid.manager import ReidConfig, ReidManager

__all__ = [
    "Embedder",
    "FusedEmbedder",
    "HsvHistogramEmbedder",
    "OnnxEmbedder",
    "ReidConfig",
    "ReidManager",
    "SiteGallery",
    "make_embedder",
]
