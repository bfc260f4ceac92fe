"""Settings of the tracker service (YAML section ``tracker``, environment ``VAP_TRACKER_*``).

These are the service-wide defaults; each scenario's ScenarioConfig (TrackerSettings, ReidSettings,
AnalyticsSettings) overrides them per channel while it runs.
"""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from vap_common.settings import ServiceSettings
from vap_tracker.attributes.settings import AttributeDefaults
from vap_tracker.bytetrack import TrackerConfig
from vap_tracker.reid.manager import ReidConfig


class TrackerDefaults(BaseModel):
    model_config = {"extra": "forbid"}

    high_score_threshold: float = Field(default=0.5, ge=0, le=1)
    low_score_threshold: float = Field(default=0.1, ge=0, le=1)
    new_track_threshold: float = Field(default=0.7, ge=0, le=1)
    match_iou_threshold: float = Field(default=0.2, ge=0, le=1)
    min_hits: int = Field(default=2, ge=1)
    lost_timeout_s: float = Field(default=2.0, gt=0)
    # Nominal frame rate of the cameras: the unit of the motion model's noise (timestamps drive it).
    ref_fps: float = Field(default=25.0, gt=0)
    # Colour histograms of the detections' crops in association (vap_tracker.appearance): about 50 us a
    # person; off = motion alone (TrackerConfig explains the settings).
    appearance: bool = True

    def config(self) -> TrackerConfig:
        config = TrackerConfig(
            high_score_threshold=self.high_score_threshold,
            low_score_threshold=self.low_score_threshold,
            new_track_threshold=self.new_track_threshold,
            match_iou_threshold=self.match_iou_threshold,
            min_hits=self.min_hits,
            lost_timeout_s=self.lost_timeout_s,
            ref_fps=self.ref_fps,
        )
        if self.appearance:
            return config
        return replace(config, appearance_veto=0.0, appearance_weight=0.0, appearance_reattach=0.0)


class ReidDefaults(BaseModel):
    model_config = {"extra": "forbid"}

    # "auto": MobileNetV2 (ONNX) fused with the HSV histogram when the model file is there (models_dir()),
    # else the HSV histogram alone (the reason is logged). "onnx", "fused", "hsv" force one.
    embedder: Literal["auto", "onnx", "fused", "hsv"] = "auto"
    model_path: Path | None = None
    # onnxruntime threads of the embedding worker; 1 leaves the other cores to inference.
    threads: int = Field(default=1, ge=1)
    max_crops_per_frame: int = Field(default=2, ge=0)
    max_in_flight: int = Field(default=2, ge=1)
    refresh_s: float = Field(default=2.0, gt=0)
    match_threshold: float | None = Field(default=None, ge=0, le=1)
    gallery_ttl_s: float = Field(default=600.0, gt=0)
    classes: list[str] = Field(default_factory=lambda: ["person"])

    def config(self) -> ReidConfig:
        return ReidConfig(
            match_threshold=self.match_threshold,
            max_crops_per_frame=self.max_crops_per_frame,
            max_in_flight=self.max_in_flight,
            refresh_s=self.refresh_s,
            classes=tuple(self.classes),
        )


def _default_tracker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ShardSettings(BaseModel):
    model_config = {"extra": "forbid"}

    # Off: this tracker tracks every channel it hears (or `channels`), as a single tracker does.
    enabled: bool = False
    # Unique among the trackers of a deployment (default: host name and pid).
    tracker_id: str = Field(default_factory=_default_tracker_id, min_length=1)
    # TrackerStatus heartbeat period, and the silence after which a tracker's channels are taken over.
    heartbeat_s: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=4.0, gt=0)


class TrackerServiceSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VAP_TRACKER_", env_nested_delimiter="__", extra="forbid")
    yaml_section: ClassVar[str] = "tracker"

    # Channels this process tracks; empty = every channel (one tracker process for the whole fleet).
    channels: list[str] = Field(default_factory=list)
    # Sharding between several tracker processes (vap_tracker.sharding): each tracks about 1/n of the
    # channels and takes over the channels of a tracker that stops or dies.
    shard: ShardSettings = Field(default_factory=ShardSettings)
    tracker: TrackerDefaults = Field(default_factory=TrackerDefaults)
    reid: ReidDefaults = Field(default_factory=ReidDefaults)
    # Secondary classifiers (gender, age group, user ONNX) on crops of confirmed tracks.
    attributes: AttributeDefaults = Field(default_factory=AttributeDefaults)
