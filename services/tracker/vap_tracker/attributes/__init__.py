"""Secondary classifiers (gender, age group, or any user ONNX classifier) on crops of confirmed tracks: a
per-channel stage with a bounded crop budget per frame, a worker thread, and a vote per track."""

from vap_tracker.attributes.classifier import ClassifierConfig, ClassifierLoadError, OnnxClassifier
from vap_tracker.attributes.faces import FaceAligner
from vap_tracker.attributes.stage import AttributeConfig, AttributeStage, AttributeStats, Classifiers
from vap_tracker.attributes.vote import UNKNOWN, Vote

__all__ = [
    "UNKNOWN",
    "AttributeConfig",
    "AttributeStage",
    "AttributeStats",
    "ClassifierConfig",
    "ClassifierLoadError",
    "Classifiers",
    "FaceAligner",
    "OnnxClassifier",
    "Vote",
]
