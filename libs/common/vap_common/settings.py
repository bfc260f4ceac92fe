"""Typed service settings: defaults that work on a laptop, a YAML file, then environment overrides.

Each service defines one subclass of ``ServiceSettings`` with its own ``env_prefix`` (``VAP_DECODER_``, ...).
Precedence, strongest first: keyword arguments, environment variables (nested fields with ``__``, e.g.
``VAP_DECODER_SOURCE__FPS=5``), the YAML file, the defaults. The YAML file is the one passed to ``load``, or
the one named by ``VAP_CONFIG``. NATS_URL and DATABASE_URL are read un-prefixed, as everywhere in VAP, and
so are the NATS credentials every service takes the same way: ``VAP_NATS_USER`` with ``VAP_NATS_PASSWORD`` or
``VAP_NATS_PASSWORD_FILE`` (a file holding the password, e.g. a container secret), and for TLS
``VAP_NATS_TLS_CA`` / ``VAP_NATS_TLS_CERT`` / ``VAP_NATS_TLS_KEY`` (see ``vap_common.nats_auth``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import yaml
from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from vap_common import nats_auth
from vap_common.nats_auth import NatsAuth, NatsTls

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


def resolve_password(user: str, password: SecretStr, password_file: Path | None, what: str) -> SecretStr:
    """``password``, or the content of ``password_file`` (stripped; a container secret); ValueError naming
    the ``<what>_...`` fields for both set, an unreadable or empty file, or a password without a user."""
    if password_file is not None:
        if password.get_secret_value():
            raise ValueError(f"set {what}_password or {what}_password_file, not both")
        try:
            secret = password_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"{what}_password_file {password_file}: {exc.strerror}") from None
        if not secret:
            raise ValueError(f"{what}_password_file {password_file} is empty")
        password = SecretStr(secret)
    if password.get_secret_value() and not user:
        raise ValueError(f"{what}_password is set but {what}_user is not")
    return password


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
    # NATS credentials (one user per service role, vap_common.nats_auth); empty = the user info of NATS_URL.
    nats_user: str = Field(default="", validation_alias=AliasChoices(nats_auth.USER_ENV, "nats_user"))
    nats_password: SecretStr = Field(
        default=SecretStr(""), validation_alias=AliasChoices(nats_auth.PASSWORD_ENV, "nats_password")
    )
    nats_password_file: Path | None = Field(
        default=None, validation_alias=AliasChoices(nats_auth.PASSWORD_FILE_ENV, "nats_password_file")
    )
    # TLS towards NATS (multi-host): the CA of the server's certificate, and this client's certificate and key
    # where the server verifies clients.
    nats_tls_ca: Path | None = Field(
        default=None, validation_alias=AliasChoices(nats_auth.TLS_CA_ENV, "nats_tls_ca")
    )
    nats_tls_cert: Path | None = Field(
        default=None, validation_alias=AliasChoices(nats_auth.TLS_CERT_ENV, "nats_tls_cert")
    )
    nats_tls_key: Path | None = Field(
        default=None, validation_alias=AliasChoices(nats_auth.TLS_KEY_ENV, "nats_tls_key")
    )
    # Address the health/gRPC and metrics endpoints listen on: loopback by default (a laptop), 0.0.0.0 in
    # containers so Prometheus and other services can reach them.
    bind_host: str = "127.0.0.1"
    # Prometheus metrics HTTP port (0 = disabled) and gRPC health port (0 = pick a free one).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    health_port: int = Field(default=0, ge=0, le=65535)

    @model_validator(mode="after")
    def _nats_credentials(self) -> Self:
        self.nats_password = resolve_password(
            self.nats_user, self.nats_password, self.nats_password_file, "nats"
        )
        self.nats_password_file = None  # resolved: a child process gets the password itself
        if (self.nats_tls_cert is None) != (self.nats_tls_key is None):
            raise ValueError("nats_tls_cert and nats_tls_key go together")
        for name in ("nats_tls_ca", "nats_tls_cert", "nats_tls_key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a file")
        return self

    def nats_auth(self) -> NatsAuth:
        """The NATS credentials (and TLS) of these settings; empty when none are configured."""
        tls = None
        if self.nats_tls_ca is not None or self.nats_tls_cert is not None:
            tls = NatsTls(self.nats_tls_ca, self.nats_tls_cert, self.nats_tls_key)
        return NatsAuth(self.nats_user, self.nats_password.get_secret_value(), tls)

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
