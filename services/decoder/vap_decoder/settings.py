"""Settings of the decoder agent and of the decoder processes it starts (one typed object for both).

YAML section ``decoder``, environment prefix ``VAP_DECODER_`` (e.g. ``VAP_DECODER_MAX_WORKERS=8``). The
per-source defaults below apply when a SourceSpec leaves the field unset; a decoder process receives the
agent's settings through its environment (see ``process.child_environment``), never on its command line.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from vap_common.nats_auth import NatsAuth
from vap_common.settings import ServiceSettings, resolve_password

ThreadType = Literal["AUTO", "FRAME", "SLICE", "NONE"]


def _default_agent_id() -> str:
    # One agent per host by default: the host name is stable across restarts, as AgentStatus wants.
    return socket.gethostname() or "decoder-agent"


class DecoderSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VAP_DECODER_", env_nested_delimiter="__", extra="forbid")
    yaml_section: ClassVar[str] = "decoder"

    # --- agent ------------------------------------------------------------------------------------------
    agent_id: str = Field(default_factory=_default_agent_id, min_length=1)
    # --- node (scale-out) -------------------------------------------------------------------------------
    # Node id reported to the control plane; "" = single node: AgentStatus says the host name and frames go
    # on vap.frames.<channel>. Set (with the same id for the node's inference service), frames go on
    # vap.frames.<channel>.<node> and only that node's inference service reads them.
    node_id: str = ""
    # Prefix of this node's ring names ("" = the node id): two nodes on one machine never share a ring.
    shm_prefix: str = ""
    # Node registration, reported with every heartbeat: labels scenarios select nodes by, and the inference
    # backend and models of the node's inference service (empty = any model).
    node_labels: dict[str, str] = Field(default_factory=dict)
    node_backend: str = ""
    node_models: list[str] = Field(default_factory=list)
    # MAX_WORKERS: the most decoder processes the agent runs at once; a start beyond it is refused.
    max_workers: int = Field(default=16, ge=1)
    # AgentStatus heartbeat period.
    status_interval_s: float = Field(default=2.0, gt=0)
    # A crashed decoder process is restarted after restart_backoff_initial_s, doubling up to the max; the
    # backoff resets once a process has run for restart_reset_after_s.
    restart_backoff_initial_s: float = Field(default=0.5, gt=0)
    restart_backoff_max_s: float = Field(default=30.0, gt=0)
    restart_reset_after_s: float = Field(default=30.0, gt=0)
    # Time between SIGTERM and SIGKILL when a channel is stopped (StopChannel.grace_period overrides it).
    stop_grace_s: float = Field(default=5.0, gt=0)
    # Commands already answered, kept to answer repeats (same command_id) with the first reply.
    reply_cache_size: int = Field(default=1024, ge=1)
    # NATS credentials of the decoder processes (VAP_DECODER_CHANNEL_NATS_USER / _PASSWORD / _PASSWORD_FILE):
    # the decoder-channel role may publish frames and health only, so the processes that parse camera
    # streams hold no more than that. Empty = the agent's own credentials.
    channel_nats_user: str = ""
    channel_nats_password: SecretStr = SecretStr("")
    channel_nats_password_file: Path | None = None

    # --- decoder processes: defaults for unset SourceSpec fields ----------------------------------------
    ring_slots: int = Field(default=8, ge=2)
    open_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=5.0, gt=0)
    stall_timeout_s: float = Field(default=10.0, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    # First reconnect delay before jitter; the first retry always happens within 1 s.
    backoff_initial_s: float = Field(default=0.5, gt=0, le=1.0)
    # For the first fast_reconnect_window_s of an outage, retries come at least every fast_reconnect_s (then
    # the backoff grows to backoff_max_s): a camera that comes back within a minute streams again within
    # about a second (issue 23: <= 2 s to the first detection).
    fast_reconnect_s: float = Field(default=0.5, gt=0)
    fast_reconnect_window_s: float = Field(default=60.0, ge=0)
    # ChannelHealth is published at every state change and at least this often.
    health_interval_s: float = Field(default=1.0, gt=0)
    # FFmpeg decoder threading. Files read as fast as possible use frame threading (throughput); live sources
    # use slice threading, which adds no frames of latency (frame threading holds back threads-1 frames).
    file_thread_type: ThreadType = "AUTO"
    live_thread_type: ThreadType = "SLICE"
    # 0 = FFmpeg picks (cores + 1 for frame threading).
    decode_threads: int = Field(default=0, ge=0)
    # Opt-in, lowers image quality: skip H.264/HEVC in-loop deblocking for all frames (FFmpeg's
    # skip_loop_filter=all). Blocking artefacts show in the ring and build up until the next keyframe, since
    # frames are predicted from unfiltered references. Measured on the shared 2-core box, 720p25 main profile
    # over RTSP, 11 of 25 fps kept: decoder CPU per decoded frame 4.35 -> 3.60 ms (-17%). Off by default:
    # ~85% of the decoder's CPU is FFmpeg's H.264 decode itself, and this is the only lever on it that keeps
    # every frame.
    skip_loop_filter: bool = False

    @property
    def ring_prefix(self) -> str:
        """Prefix of this node's ring names ("" on a single node)."""
        return self.shm_prefix or self.node_id

    @property
    def reported_node_id(self) -> str:
        """The node id AgentStatus reports: ``node_id``, or the host name on a single node."""
        return self.node_id or socket.gethostname()

    @model_validator(mode="after")
    def _channel_credentials(self) -> Self:
        self.channel_nats_password = resolve_password(
            self.channel_nats_user,
            self.channel_nats_password,
            self.channel_nats_password_file,
            "channel_nats",
        )
        self.channel_nats_password_file = None
        return self

    def channel_nats_auth(self) -> NatsAuth:
        """How the decoder processes connect: their own user when configured, else the agent's (TLS as the
        agent's)."""
        own = self.nats_auth()
        if not self.channel_nats_user:
            return own
        return NatsAuth(self.channel_nats_user, self.channel_nats_password.get_secret_value(), own.tls)
