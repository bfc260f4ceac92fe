"""ControlSettings: defaults, then the ``control:`` section of the YAML file, then ``VAP_CONTROL_*`` env.

Secrets (API tokens) are ``SecretStr`` so that logging the settings object never prints them. With no token
configured the service generates one into ``<data_dir>/control/api-token`` (0600) on first start, so a local
stack is never open by accident and the CLI can read the same file.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from vap_common import subjects
from vap_common.settings import ServiceSettings


class ControlSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VAP_CONTROL_", env_nested_delimiter="__", extra="forbid")
    yaml_section: ClassVar[str] = "control"

    # --- gRPC API ------------------------------------------------------------------------------------------
    # host:port of the public API (port 0 = any free port; the bound one is logged and in ControlServer).
    listen: str = "127.0.0.1:50051"
    # Accepted bearer tokens ("authorization: Bearer <token>"); several allow rotation. Env: a JSON list.
    auth_tokens: list[SecretStr] = Field(default_factory=list)
    # Read (and, if missing and auth_tokens is empty, generated) when no token is configured.
    auth_token_file: Path | None = None
    # TLS: both set = the API port speaks TLS only. A client CA additionally requires client certificates.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # Largest accepted request message (Detect images are the big ones); larger -> RESOURCE_EXHAUSTED.
    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Largest response message (query pages are bounded by page_size anyway).
    max_response_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    # --- inference service (Detect, ListModels, model validation) -------------------------------------------
    # host:port of an InferenceService; None = Detect/ListModels answer UNAVAILABLE and model names in
    # scenarios are not checked.
    inference_target: str | None = None
    inference_timeout_s: float = Field(default=30.0, gt=0)
    # ListModels answers are cached this long for validating PipelineSettings.model.
    models_cache_s: float = Field(default=30.0, ge=0)

    # --- PostgreSQL ----------------------------------------------------------------------------------------
    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=10, ge=2)
    # Stored detections, tracks, events and counts older than this are deleted; 0 = keep forever.
    retention_hours: float = Field(default=168.0, ge=0)
    retention_check_s: float = Field(default=600.0, gt=0)
    # Store TrackedFrame tracks (one row per track and frame); events and counts are always stored.
    store_tracks: bool = True

    # --- outbox relay ---------------------------------------------------------------------------------------
    # Poll period of the relay; inserts also wake it at once (LISTEN/NOTIFY).
    outbox_poll_s: float = Field(default=1.0, gt=0)
    outbox_batch: int = Field(default=32, ge=1)
    # How long the relay waits for an agent's reply to a command before retrying (same command id).
    command_timeout_s: float = Field(default=5.0, gt=0)
    retry_initial_s: float = Field(default=0.2, gt=0)
    retry_max_s: float = Field(default=10.0, gt=0)
    # Grace period sent with StopChannel; unset = the agent's default.
    stop_grace_s: float | None = Field(default=None, gt=0)

    # --- decoder agents -------------------------------------------------------------------------------------
    # An agent without a heartbeat for this long (while we are connected to NATS) is considered gone.
    agent_timeout_s: float = Field(default=10.0, gt=0)
    # Scenarios of an agent silent for agent_timeout_s move to another node (True), or fail (False).
    failover: bool = True
    # Replicas of the JetStream streams control creates (results inbox, scenario configs): 3 on a
    # three-server NATS cluster, so losing one server stops nothing.
    stream_replicas: int = Field(default=1, ge=1, le=5)
    reconcile_s: float = Field(default=2.0, gt=0)
    # Channel health is written to the scenario row on every state change and at most this often otherwise.
    health_persist_s: float = Field(default=5.0, gt=0)

    # --- inbox (JetStream) ----------------------------------------------------------------------------------
    inbox_stream: str = Field(default=subjects.RESULTS_STREAM, pattern=r"^[A-Za-z0-9_-]+$")
    inbox_consumer: str = Field(default="vap-control-inbox", pattern=r"^[A-Za-z0-9_-]+$")
    inbox_storage: Literal["file", "memory"] = "file"
    # Results waiting for the control service are kept at most this long / this many bytes in JetStream.
    inbox_max_age_s: float = Field(default=3600.0, gt=0)
    inbox_max_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024 * 1024)
    inbox_batch: int = Field(default=256, ge=1)
    # After a batch smaller than inbox_batch the inbox waits until this long has passed since the fetch, so
    # the next fetch carries many messages: one pull request, one transaction and one commit per batch
    # instead of per message or two (the cost per stored frame falls several-fold). Stored results reach
    # queries up to this much later; live subscriptions do not wait for it. 0 = store at once.
    inbox_linger_s: float = Field(default=0.25, ge=0, le=5.0)
    # Unacknowledged results are redelivered after this long (e.g. when a control instance died mid-batch).
    inbox_ack_wait_s: float = Field(default=30.0, gt=0)
    # Latest ScenarioConfig per scenario, kept in a JetStream stream so late-starting consumers catch up.
    config_stream: str = Field(default=subjects.CONFIG_STREAM, pattern=r"^[A-Za-z0-9_-]+$")

    # --- live subscriptions ---------------------------------------------------------------------------------
    # Messages buffered per gRPC subscriber; when full the oldest are dropped and counted for that subscriber.
    subscriber_queue: int = Field(default=256, ge=1)
    # Window of ListChannels' live fps and latency figures.
    stats_window_s: float = Field(default=5.0, gt=0)

    # --- scenarios ------------------------------------------------------------------------------------------
    # AnalyticsSettings.count_interval when a scenario leaves it unset.
    default_count_interval_s: int = Field(default=60, ge=1)

    def token_file(self) -> Path:
        return self.auth_token_file or self.data_dir / "control" / "api-token"
