"""The one Settings model.

Precedence (highest first): explicit arguments, environment variables ``FLEET_<SECTION>__<KEY>``,
the TOML file named by ``FLEET_CONFIG`` (or ``config/fleet.toml`` when it exists), defaults.
Every key is documented by its ``description``; the README's configuration reference is
generated from this model (``funasr-fleet config-reference``) and a test keeps it in sync. Each
section is declared in its own module here (``engine``, ``broker``, ``s3``, ``jobflow``,
``processes``, ``webhooks``); this module assembles them and loads them.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from funasr_fleet.errors import ConfigError
from funasr_fleet.settings.broker import AmqpSettings
from funasr_fleet.settings.engine import EngineSettings
from funasr_fleet.settings.jobflow import ALL_FORMATS, IntakeSettings, JobsSettings, OutputSettings
from funasr_fleet.settings.processes import ConsumerSettings, LogSettings, SupervisorSettings
from funasr_fleet.settings.s3 import S3Settings
from funasr_fleet.settings.webhooks import WebhookSettings, WebhookSubscription

# The section models are the public configuration API: importable from here as before.
__all__ = [
    "ALL_FORMATS",
    "DEFAULT_CONFIG_FILE",
    "AmqpSettings",
    "ConsumerSettings",
    "EngineSettings",
    "IntakeSettings",
    "JobsSettings",
    "LogSettings",
    "OutputSettings",
    "S3Settings",
    "Settings",
    "SupervisorSettings",
    "WebhookSettings",
    "WebhookSubscription",
    "config_file",
    "load_settings",
    "usable_cores",
]

DEFAULT_CONFIG_FILE = Path("config/fleet.toml")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLEET_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    engine: EngineSettings = Field(default_factory=EngineSettings)
    amqp: AmqpSettings = Field(default_factory=AmqpSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    outputs: OutputSettings = Field(default_factory=OutputSettings)
    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings)
    supervisor: SupervisorSettings = Field(default_factory=SupervisorSettings)
    intake: IntakeSettings = Field(default_factory=IntakeSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    def to_env(self) -> dict[str, str]:
        """``FLEET_<SECTION>__<KEY>`` variables reproducing these settings in a child process (secrets included)."""
        env: dict[str, str] = {}
        for section_name in type(self).model_fields:
            section = getattr(self, section_name)
            for key in type(section).model_fields:
                value = getattr(section, key)
                if value is None:
                    continue
                if isinstance(value, SecretStr):
                    text = value.get_secret_value()
                elif isinstance(value, bool):
                    text = "true" if value else "false"
                elif isinstance(value, (list, dict)):
                    text = json.dumps(section.model_dump(mode="json", include={key})[key])
                else:
                    text = str(value)
                env[f"FLEET_{section_name.upper()}__{key.upper()}"] = text
        return env

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def config_file() -> Path | None:
    named = os.environ.get("FLEET_CONFIG")
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(f"FLEET_CONFIG={named}: no such file")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning validation errors into one ConfigError naming each bad key."""
    try:
        return Settings(**overrides)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_file()}: not valid TOML: {exc}") from None
    except ValidationError as exc:
        # loc is (section, key, ...): what follows is a list index or a union member ("int"),
        # not part of the key or the variable's name; merge such errors into one line.
        problems: dict[tuple[str, ...], list[str]] = {}
        for err in exc.errors():
            problems.setdefault(tuple(str(p) for p in err["loc"][:2]), []).append(err["msg"])
        lines = []
        for loc, messages in problems.items():
            env = "FLEET_" + "__".join(p.upper() for p in loc)
            lines.append(f"  {'.'.join(loc)} ({env}): {'; or '.join(messages)}")
        raise ConfigError("invalid settings:\n" + "\n".join(lines)) from None


def usable_cores() -> int:
    """Cores this process may use: CPU affinity and the cgroup v2/v1 CPU quota, whichever is smaller."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, max(1, int(quota)))
    return max(1, cores)


def _cgroup_cpu_limit() -> float | None:
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None
