"""Typed service settings: defaults that work on a laptop, a YAML file, then environment overrides.

Each service defines one subclass of ``ServiceSettings`` with its own ``env_prefix`` (``VAP_DECODER_``, ...).
Precedence, strongest first: keyword arguments, environment variables (nested fields with ``__``, e.g.
``VAP_DECODER_SOURCE__FPS=5``), the YAML file, the defaults. The YAML file is the one passed to ``load``, or
the one named by ``VAP_CONFIG``. NATS_URL and DATABASE_URL are read un-prefixed, as everywhere in VAP.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import yaml
from pydantic import AliasChoices, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

CONFIG_ENV = "VAP_CONFIG"


class SettingsError(ValueError):
    """A settings file or value that cannot be used; the message names the file and field."""


class _YamlSource(PydanticBaseSettingsSource):
    """The service's section of a YAML file (or the whole file when it has no such section)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None, section: str) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path is None:
            return
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise SettingsError(f"cannot read settings file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise SettingsError(f"settings file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise SettingsError(f"settings file {path} must hold a mapping at the top level")
        section_data = loaded.get(section, loaded) if section else loaded
        if not isinstance(section_data, dict):
            raise SettingsError(f"settings file {path}: section '{section}' must be a mapping")
        self._data = section_data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class ServiceSettings(BaseSettings):
    """Settings every VAP process has; subclasses add their own and set ``yaml_section``."""

    model_config = SettingsConfigDict(env_prefix="VAP_", env_nested_delimiter="__", extra="forbid")
    yaml_section: ClassVar[str] = ""
    _yaml_path: ClassVar[Path | None] = None

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    # Where embedded servers keep their data and services their caches.
    data_dir: Path = Path(".vap")
    nats_url: str | None = Field(default=None, validation_alias=AliasChoices("NATS_URL", "nats_url"))
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "database_url")
    )
    # Address the health/gRPC and metrics endpoints listen on: loopback by default (a laptop), 0.0.0.0 in
    # containers so Prometheus and other services can reach them.
    bind_host: str = "127.0.0.1"
    # Prometheus metrics HTTP port (0 = disabled) and gRPC health port (0 = pick a free one).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    health_port: int = Field(default=0, ge=0, le=65535)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_source = _YamlSource(settings_cls, cls._yaml_path, cls.yaml_section)
        return (init_settings, env_settings, yaml_source)

    @classmethod
    def load(cls, path: Path | str | None = None, **overrides: Any) -> Self:
        """Build the settings from ``path`` (or $VAP_CONFIG), the environment and ``overrides``."""
        from pydantic import ValidationError

        chosen = path if path is not None else os.environ.get(CONFIG_ENV)
        yaml_path = Path(chosen) if chosen else None
        if yaml_path is not None and not yaml_path.is_file():
            raise SettingsError(f"settings file {yaml_path} does not exist")
        previous = cls._yaml_path
        cls._yaml_path = yaml_path
        try:
            return cls(**overrides)
        except ValidationError as exc:
            where = f" in {yaml_path}" if yaml_path else ""
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
            )
            raise SettingsError(f"invalid {cls.__name__}{where}: {problems}") from exc
        finally:
            cls._yaml_path = previous
