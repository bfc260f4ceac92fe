"""The dataset capture service's settings (YAML section ``dataset``, ``VAP_DATASET_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from vap_common.settings import ServiceSettings

Format = Literal["yolo", "coco"]


class DatasetSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VAP_DATASET_", env_nested_delimiter="__", extra="forbid")
    yaml_section: ClassVar[str] = "dataset"
    dir: Path = Path(".vap/datasets")
    format: Format = "yolo"
    max_bytes: int = Field(default=2 * 1024**3, ge=1024)
    jpeg_quality: int = Field(default=90, ge=10, le=100)
