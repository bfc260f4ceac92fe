"""InferenceSettings: defaults, then the ``inference:`` section of the YAML file, then VAP_INFERENCE_* env."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from vap_common.grpc_auth import load_or_create_token
from vap_common.paths import models_dir
from vap_common.settings import ServiceSettings
from vap_models import DEFAULT_MODEL


class UserModel(BaseModel):
    """A user-supplied Ultralytics YOLOv8/YOLO11 detection ONNX export."""

    name: str = Field(min_length=1)
    # Absolute, or relative to the models directory.
    path: Path
    # Labels; empty = from the file's Ultralytics metadata (or COCO-80 when it has 80 classes).
    class_names: list[str] = Field(default_factory=list)
    confidence_threshold: float = Field(default=0.25, ge=0.0, le=1.0)
    nms_iou_threshold: float = Field(default=0.45, ge=0.0, le=1.0)


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VAP_INFERENCE_", env_nested_delimiter="__", extra="forbid")
    yaml_section: ClassVar[str] = "inference"

    # Model used when a scenario or request names none; loaded at start.
    default_model: str = DEFAULT_MODEL
    # More models to load at start (others load on first use).
    preload: list[str] = Field(default_factory=list)
    user_models: list[UserModel] = Field(default_factory=list)
    # None = $VAP_MODELS_DIR, else ~/.cache/vap/models (where `python -m vap_stack.models fetch` caches).
    models_dir: Path | None = None

    # auto: TensorRT when tensorrt + pycuda import and a CUDA device exists, else ONNX Runtime (with its
    # CUDA provider when onnxruntime-gpu is installed).
    backend: Literal["auto", "onnxruntime", "tensorrt"] = "auto"
    # ONNX Runtime intra-op threads per batch run (0 = all cores). 1 with two parallel lanes (below) is
    # the measured best on the 2-core target; one lane with 2 threads gives the lowest latency when idle.
    threads: int = Field(default=1, ge=0, le=256)
    # Let ONNX Runtime's threads busy-wait between operators: lower latency on an otherwise idle machine,
    # much slower when other processes share the cores (see backends/onnxruntime.py). Off by default.
    spin: bool = False
    # OpenCV threads for preprocessing in this process: the images are small (network size), so a thread
    # pool only adds hand-offs and contention with ONNX Runtime's threads.
    opencv_threads: int = Field(default=1, ge=0, le=256)
    # TensorRT: allow FP16 kernels where the GPU has fast FP16; engine cache (None = <data_dir>/trt-engines).
    fp16: bool = True
    engine_cache_dir: Path | None = None

    # Rectangular inputs for fully convolutional models (NanoDet) on ONNX Runtime: a 16:9 frame runs at
    # 416x256 instead of 416x416 (same scale, no padding rows): NanoDet-int8 ~36 % less model time, the same
    # people (preprocess.py). Off: every frame letterboxed into the square.
    rect_input: bool = True

    # Batches of one model run at the same time (each lane with its own input buffers, on the same ONNX
    # Runtime session; TensorRT runs one at a time). With ``threads: 1`` and one lane per core, each batch
    # runs on its own core: `bench e2e` carried 3 SSDLite channels instead of 2, and NanoDet-int8 at 3
    # channels rose from 6.7 to 8.9 det/s, against one lane on two intra-op threads, whose hand-offs
    # stall whenever a decoder holds the other core.
    parallel_batches: int = Field(default=2, ge=1, le=8)

    # Batching across channels.
    max_batch: int = Field(default=8, ge=1, le=64)
    max_wait_ms: float = Field(default=4.0, ge=0.0, le=1000.0)
    # Frames older than this (capture time, else arrival) when their batch starts are dropped.
    stale_after_ms: float = Field(default=500.0, gt=0.0)
    # NATS queue group for the FrameRef subscription ("" = none: every inference service on the host sees
    # every frame).
    queue_group: str = ""
    # Node this service belongs to ("" = single node: every channel's frames). Set to the node id of the
    # decoder agent on the same host: only that node's frames (vap.frames.*.<node>) are read, since rings
    # are host-local.
    node_id: str = ""
    max_detections: int = Field(default=300, ge=1)

    # gRPC Detect limits. The server accepts messages this much larger than max_image_bytes (the request's
    # other fields), so an image over the limit gets INVALID_ARGUMENT naming it, not RESOURCE_EXHAUSTED.
    max_image_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(default=40_000_000, ge=1)

    # The API (Detect, ListModels) takes the control API's bearer tokens: auth_tokens, else the token in
    # auth_token_file (default: the control service's, <data_dir>/control/api-token, created if missing).
    # Health and reflection need none.
    auth_tokens: list[SecretStr] = Field(default_factory=list)
    auth_token_file: Path | None = None

    def api_tokens(self) -> list[str]:
        tokens = [t.get_secret_value() for t in self.auth_tokens]
        return tokens or [
            load_or_create_token(self.auth_token_file or self.data_dir / "control" / "api-token")
        ]

    def resolved_models_dir(self) -> Path:
        return self.models_dir if self.models_dir is not None else models_dir()

    def resolved_engine_cache(self) -> Path:
        return self.engine_cache_dir if self.engine_cache_dir is not None else self.data_dir / "trt-engines"
