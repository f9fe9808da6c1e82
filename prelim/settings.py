"""The one settings object.

Precedence, highest first: command-line flags (passed as keyword overrides),
``PRELIM_*`` environment variables, a ``prelim.toml`` file, then the defaults
below. Nothing reads the environment at import time: call :func:`get_settings`.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_MODEL = "google/medgemma-4b-it"


def _toml_path() -> Path:
    return Path(os.environ.get("PRELIM_CONFIG", "prelim.toml"))


class Settings(BaseSettings):
    """Every knob prelim has. Each field is the ``PRELIM_<NAME>`` variable."""

    model_config = SettingsConfigDict(
        env_prefix="PRELIM_", extra="forbid", validate_default=True, frozen=True
    )

    # -- storage -----------------------------------------------------------
    data_dir: Path = Field(
        Path("var"), description="Folder for the embedded database, spool and logs."
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the queue database; empty means SQLite in data_dir.",
    )
    spool_dir: Path | None = Field(
        None, description="Where received instances are stored; empty means data_dir/spool."
    )
    images_dir: Path | None = Field(
        None,
        description="Where de-identified model input images are kept for reviewers; "
        "empty means data_dir/images.",
    )

    # -- DICOM listener ----------------------------------------------------
    listener_host: str = Field("0.0.0.0", description="Address the DICOM listener binds.")
    listener_port: int = Field(
        11112, ge=0, le=65535, description="DICOM listener port (0 picks a free one)."
    )
    ae_title: str = Field("PRELIM", max_length=16, description="The listener's AE title.")
    allowed_ae_titles: list[str] = Field(
        default_factory=list,
        description="Calling AE titles allowed to associate; empty allows any.",
    )
    allowed_networks: list[str] = Field(
        default_factory=list,
        description="Source addresses or networks (CIDR) allowed; empty allows any.",
    )
    max_associations: int = Field(16, ge=1, description="Concurrent associations at most.")
    max_pdu: int = Field(
        262_144, ge=0, description="Maximum PDU size the listener receives (0 = unlimited)."
    )
    tls_cert: Path | None = Field(None, description="PEM certificate: enables TLS 1.2+.")
    tls_key: Path | None = Field(None, description="PEM private key for tls_cert.")
    tls_ca: Path | None = Field(
        None, description="PEM CA bundle; when set, clients must present a certificate from it."
    )
    stable_age_s: float = Field(
        10.0, gt=0, description="Seconds without a new instance before a study is ready."
    )
    min_free_disk_mb: int = Field(
        512, ge=0, description="Refuse instances (0xA700) when the spool has less free space."
    )
    files_ahead: int = Field(
        512,
        ge=0,
        description="Empty temp files the listener makes while idle, for the next burst (0: none).",
    )

    # -- model -------------------------------------------------------------
    model: str = Field(
        DEFAULT_MODEL, description="Hugging Face model id or local folder of a Gemma 3 checkpoint."
    )
    model_revision: str | None = Field(None, description="Model revision (commit) to pin.")
    device: str = Field("auto", description="Torch device: auto, cuda, cuda:N or cpu.")
    max_new_tokens: int = Field(512, ge=1, description="Longest draft, in tokens.")
    max_batch_size: int = Field(8, ge=1, description="Largest generation batch.")

    # -- pipeline ----------------------------------------------------------
    deployment: str = Field(
        "ingest-study/prelim",
        description="Prefect deployment the listener triggers in scale-out mode.",
    )
    work_pool: str = Field("prelim-gpu", description="Prefect work pool for GPU workers.")
    gpu_concurrency: int = Field(1, ge=1, description="Studies drafted at once per GPU.")
    prefect_port: int = Field(4200, ge=1, le=65535, description="Embedded Prefect server port.")

    # -- review app --------------------------------------------------------
    review_host: str = Field("127.0.0.1", description="Address the review web app binds.")
    review_port: int = Field(8000, ge=1, le=65535, description="Review web app port.")
    secret_key: SecretStr | None = Field(
        None,
        description="Session signing key; required when the review app binds a non-loopback "
        "address.",
    )
    claim_ttl_s: float = Field(
        900.0, gt=0, description="A claim not renewed for this long returns to the queue."
    )

    log_level: str = Field("INFO", description="Log level of prelim's own loggers.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=_toml_path()),
        )

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        value = value.strip()
        if not value or "\\" in value or not value.isprintable():
            raise ValueError("an AE title is 1-16 printable characters without backslash")
        return value

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from exc
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both PRELIM_TLS_CERT and PRELIM_TLS_KEY, or neither")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("PRELIM_TLS_CA needs PRELIM_TLS_CERT and PRELIM_TLS_KEY")
        return self

    # -- derived -----------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'prelim.db').resolve()}"

    @property
    def resolved_spool_dir(self) -> Path:
        return (self.spool_dir or self.data_dir / "spool").resolve()

    @property
    def resolved_images_dir(self) -> Path:
        return (self.images_dir or self.data_dir / "images").resolve()


def load_settings(**overrides: Any) -> Settings:
    """Build settings; ``overrides`` (flags) win over environment and file."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


_current: Settings | None = None


def get_settings() -> Settings:
    """The process's settings: those given to :func:`use_settings`, else read once."""
    global _current
    if _current is None:
        _current = load_settings()
    return _current


def use_settings(settings: Settings) -> None:
    """Make ``settings`` (flags included) what :func:`get_settings` returns in this process."""
    global _current
    _current = settings


def settings_env(settings: Settings) -> dict[str, str]:
    """``PRELIM_*`` variables that rebuild ``settings`` in a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        if name == "secret_key":
            secret = settings.secret_key
            value = secret.get_secret_value() if secret is not None else None
            if value is None:
                continue
        env[f"PRELIM_{name.upper()}"] = (
            json.dumps(value) if isinstance(value, list | dict) else str(value)
        )
    return env
