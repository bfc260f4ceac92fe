"""WebSettings: defaults, then the ``web:`` section of the YAML file, then ``VAP_WEB_*`` environment."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from vap_common.settings import ServiceSettings


class WebSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="VAP_WEB_", env_nested_delimiter="__", extra="forbid")
    yaml_section: ClassVar[str] = "web"

    # host:port of the HTTP server (port 0 = any free port; the bound one is logged).
    listen: str = "127.0.0.1:8080"
    # host:port of the control service's gRPC API; every request is made with the browser's own token.
    control_target: str = "127.0.0.1:50051"
    # PEM CA bundle when the control API speaks TLS; unset = plaintext.
    control_ca_file: Path | None = None
    control_timeout_s: float = Field(default=10.0, gt=0)
    # A token the control API accepted is trusted this long before it is checked again.
    token_cache_s: float = Field(default=30.0, ge=0)
    # Node whose cameras this gateway shows ("" = single node: vap.frames.<channel>). Set to the node id of
    # the decoder agent on the same host (only its rings are readable here): vap.frames.<channel>.<node>.
    node_id: str = ""
    # Live frames per second sent per watched camera (JPEG encoding happens only while somebody watches).
    max_fps: float = Field(default=5.0, gt=0, le=30)
    jpeg_quality: int = Field(default=75, ge=10, le=100)
    # Frames wider than this are scaled down before encoding (bandwidth); 0 = never.
    max_width: int = Field(default=1280, ge=0)
    # Without tracked results for this long the view shows the newest raw frame (no overlay) instead.
    raw_after_s: float = Field(default=2.0, gt=0)
    # Mark the login cookie Secure (set when the page is served behind HTTPS).
    secure_cookie: bool = False
