"""The one Settings model.

Precedence (highest first): explicit arguments, environment variables ``FLEET_<SECTION>__<KEY>``,
the TOML file named by ``FLEET_CONFIG`` (or ``config/fleet.toml`` when it exists), defaults.
Every key is documented by its ``description``; the README's configuration reference is
generated from this model (``funasr-fleet config-reference``) and a test keeps it in sync.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from funasr_fleet.errors import ConfigError

DEFAULT_CONFIG_FILE = Path("config/fleet.toml")
ALL_FORMATS = ("json", "srt", "vtt", "txt", "rttm")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class EngineSettings(_Section):
    model: str = Field(
        "paraformer-zh",
        description="ASR model: a FunASR/ModelScope model name, or an absolute local directory.",
    )
    vad_model: str = Field("fsmn-vad", description="VAD model name or absolute directory.")
    punc_model: str = Field("ct-punc", description="Punctuation model name or absolute directory; empty disables it.")
    spk_model: str = Field(
        "cam++", description="Speaker-embedding model name or absolute directory; empty disables diarization."
    )
    hub: Literal["ms", "hf"] = Field(
        "ms", description="Model hub used for model names (ms=ModelScope, hf=HuggingFace)."
    )
    model_cache_dir: str | None = Field(
        None,
        description="Where downloaded models are cached (sets MODELSCOPE_CACHE / HF_HOME); default: the hub's own.",
    )
    device: str = Field("cpu", description="Torch device: cpu, cuda, cuda:0 ...")
    backend: Literal["torch", "onnx"] = Field(
        "torch",
        description="Inference backend: torch (FunASR as is) or onnx (VAD, ASR and punctuation in ONNX Runtime, exported once by FunASR's exporter and cached; speakers stay torch).",
    )
    quantize: Literal["none", "int8"] = Field(
        "none",
        description="onnx backend only: int8 = dynamically quantised ASR and punctuation weights (the VAD stays fp32).",
    )
    onnx_cache_dir: str | None = Field(
        None,
        description="Where ONNX exports are cached; default: <model dir>-onnx/ next to each model (must be writable).",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="Torch/OpenMP threads for this process. Unset: usable cores (one process), or set by the supervisor to cores // consumers.",
    )
    batch_size_s: int = Field(300, ge=1, description="FunASR dynamic batch size, in seconds of audio.")
    max_end_silence_ms: int = Field(
        800,
        ge=0,
        description="VAD: silence (ms) that ends a segment. FunASR's dynamic default ignores pauses under ~2 s.",
    )
    turn_gap_s: float = Field(
        3.0, ge=0, description="Consecutive sentences of one speaker closer than this merge into one turn."
    )
    min_audio_s: float = Field(0.5, ge=0, description="Shorter audio fails with audio_too_short.")
    max_audio_s: float = Field(4 * 3600, gt=0, description="Longer audio fails with audio_too_long.")
    window_s: float = Field(
        300.0,
        ge=10,
        description=(
            "Audio longer than this is transcribed in windows of about this length, cut in VAD silences "
            "(bounded memory); speakers are clustered once over the whole file."
        ),
    )
    max_memory_mb: int | None = Field(
        None,
        ge=1,
        description=(
            "Refuse (audio_too_long) a job whose estimated peak RSS (Engine.check_memory) exceeds this; "
            "unset: no limit."
        ),
    )

    @model_validator(mode="after")
    def _quantize_needs_onnx(self) -> EngineSettings:
        if self.quantize != "none" and self.backend != "onnx":
            raise ValueError(f"quantize = {self.quantize} needs backend = onnx (the torch backend runs fp32 only)")
        return self


class AmqpSettings(_Section):
    url: SecretStr = Field(
        SecretStr("amqp://guest:guest@127.0.0.1:5672/%2F"),
        description="Broker URL (amqp:// or amqps://). Secret: holds the password.",
    )
    heartbeat_s: int = Field(30, ge=0, description="AMQP heartbeat interval negotiated with the broker.")
    connect_timeout_s: float = Field(10.0, gt=0, description="Socket connect timeout for one attempt.")
    prefetch: int = Field(1, ge=1, description="Unacked deliveries per consumer. Keep 1: one model, one job.")
    jobs_exchange: str = Field("fleet.jobs", description="Direct exchange jobs are published to.")
    jobs_queue: str = Field("fleet.jobs", description="Quorum queue the consumers read.")
    jobs_routing_key: str = Field("job", description="Routing key binding the jobs queue to the jobs exchange.")
    intake_routing_key: str = Field(
        "s3-event", description="Routing key for S3 bucket-notification records (MinIO) on the jobs exchange."
    )
    dead_letter_exchange: str = Field("fleet.dlx", description="Exchange receiving dead-lettered jobs.")
    dead_letter_queue: str = Field("fleet.jobs.dlq", description="Queue holding dead-lettered jobs.")
    retry_exchange: str = Field("fleet.retry", description="Exchange of the delay (retry) queues.")
    events_exchange: str = Field("fleet.events", description="Topic exchange for job.* events.")
    delivery_limit: int = Field(
        5, ge=1, description="Quorum x-delivery-limit: deliveries (crashes included) before a message dead-letters."
    )
    max_priority: int = Field(
        0,
        ge=0,
        le=10,
        description="0: no priorities. Quorum queues on RabbitMQ 3.10 ignore x-max-priority (see README).",
    )
    control_exchange: str = Field(
        "fleet.control", description="Topic exchange of control broadcasts to running consumers (cancel.<job_id>)."
    )
    announce_queue: str = Field(
        "fleet.jobs.dlq.announce",
        description="Quorum queue on the dead-letter exchange: the announcer publishes job.failed for broker "
        "dead-letters (delivery_limit) and records their status.",
    )
    observed_queue: str = Field(
        "fleet.jobs.observed",
        description="Quorum queue beside the jobs queue holding a copy of every published job: the announcer records "
        "`queued` for jobs published straight to AMQP. Empty = off.",
    )
    observed_max_length: int = Field(
        100_000,
        ge=1,
        description="Cap on observed_queue; the oldest copies are dropped (those jobs read `unknown` until they start).",
    )


class S3Settings(_Section):
    endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO/SeaweedFS URL); unset = AWS.")
    access_key: SecretStr | None = Field(None, description="Access key id. Secret.")
    secret_key: SecretStr | None = Field(None, description="Secret access key. Secret.")
    access_key_file: Path | None = Field(None, description="File holding the access key (Kubernetes secret mount).")
    secret_key_file: Path | None = Field(None, description="File holding the secret key.")
    region: str = Field("us-east-1", description="Region name sent to the S3 server.")
    addressing_style: Literal["path", "virtual", "auto"] = Field("path", description="Bucket addressing style.")
    connect_timeout_s: float = Field(5.0, gt=0, description="Connect timeout per request.")
    read_timeout_s: float = Field(60.0, gt=0, description="Read timeout per request.")
    max_attempts: int = Field(3, ge=1, description="boto3's own retries per call (the job retry comes on top).")
    results_bucket: str = Field("fleet-results", description="Default bucket for job outputs.")
    results_prefix: str = Field("results", description="Default key prefix for job outputs (then /<job_id>/).")
    inbox_bucket: str = Field("fleet-inbox", description="Bucket users drop audio into (bucket-drop intake, sweep).")
    inbox_prefix: str = Field("", description="Only keys under this prefix are taken from the inbox.")
    allowed_buckets: list[str] = Field(
        default_factory=list, description="Buckets jobs may read from; empty = any bucket."
    )
    max_object_bytes: int = Field(2 * 1024**3, gt=0, description="Larger audio objects fail with object_too_large.")

    def credential(self, which: Literal["access_key", "secret_key"]) -> str | None:
        """The secret's value, from the variable or from its file."""
        value: SecretStr | None = getattr(self, which)
        if value is not None:
            return value.get_secret_value()
        path: Path | None = getattr(self, f"{which}_file")
        if path is not None:
            return path.read_text().strip()
        return None


class OutputSettings(_Section):
    default_formats: list[str] = Field(
        default_factory=lambda: ["json", "srt"], description="Formats written when a job names none."
    )

    @field_validator("default_formats")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(ALL_FORMATS))
        if unknown:
            raise ValueError(f"unknown format(s) {unknown}; known: {list(ALL_FORMATS)}")
        return value


class ConsumerSettings(_Section):
    id: str | None = Field(None, description="Consumer id used as CloudEvents source; default host:pid.")
    retry_max_attempts: int = Field(5, ge=1, description="Attempts for transient failures before dead-lettering.")
    retry_base_delay_s: float = Field(2.0, gt=0, description="First retry delay; doubles each attempt, with jitter.")
    retry_max_delay_s: float = Field(300.0, gt=0, description="Cap on one retry delay.")
    deadline_base_s: float = Field(300.0, gt=0, description="Job deadline = base + factor x audio duration.")
    deadline_factor: float = Field(2.0, ge=0, description="Job deadline = base + factor x audio duration.")
    result_reuse: bool = Field(True, description="Reuse outputs of identical audio bytes + engine + options.")
    delete_source: bool = Field(False, description="Delete the source object after a successful job.")
    tmp_dir: Path | None = Field(None, description="Where audio is staged; default: the system temp dir.")
    progress_events: bool = Field(True, description="Publish job.progress events at each stage.")
    boot_timeout_s: float = Field(
        60.0, gt=0, description="Give up (boot-failure exit) if the broker is unreachable this long at start."
    )
    heartbeat_file: Path | None = Field(None, description="Touched from the connection loop; set by the supervisor.")


class SupervisorSettings(_Section):
    consumers: int | Literal["auto"] = Field("auto", description="Consumer processes; auto = usable cores // threads.")
    threads_per_consumer: int | None = Field(
        None, ge=1, description="Threads per consumer; unset = usable cores // consumers (never oversubscribed)."
    )
    http_host: str = Field("0.0.0.0", description="Bind address of /healthz, /readyz, /metrics.")
    http_port: int = Field(9100, ge=0, le=65535, description="Port of /healthz, /readyz, /metrics (0 = off).")
    heartbeat_timeout_s: float = Field(60.0, gt=0, description="A consumer silent this long is killed as hung.")
    grace_period_s: float = Field(
        3600.0, ge=0, description="On SIGTERM, wait this long for jobs to finish; keep < terminationGracePeriodSeconds."
    )
    restart_backoff_base_s: float = Field(1.0, gt=0, description="First restart delay after a crash; doubles.")
    restart_backoff_max_s: float = Field(60.0, gt=0, description="Cap on the restart delay.")
    max_boot_failures: int = Field(3, ge=1, description="Consecutive boot failures that halt the supervisor.")
    crash_window_s: float = Field(300.0, gt=0, description="Window for counting runtime crashes.")
    max_crashes_in_window: int = Field(
        10, ge=1, description="Runtime crashes within the window that halt the supervisor."
    )
    state_dir: Path | None = Field(None, description="Heartbeat files and metrics shards; default: a temp dir.")
    boot_timeout_s: float = Field(
        600.0, gt=0, description="A booting consumer (loading its model) silent this long is killed as hung."
    )
    abort_grace_s: float = Field(
        5.0, gt=0, description="After SIGABRT to a hung consumer, wait this long before SIGKILL."
    )
    preload: Literal["none", "fork"] = Field(
        "none",
        description="fork = load the model once in a zygote and fork consumers from it: weights shared "
        "copy-on-write, restarts in milliseconds; CPU only. none = each consumer loads its own.",
    )


class IntakeSettings(_Section):
    suffixes: list[str] = Field(
        default_factory=lambda: [".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus", ".webm", ".mp4", ".mov"],
        description="Only objects with these suffixes become jobs (case-insensitive).",
    )
    formats: list[str] = Field(
        default_factory=lambda: ["json", "srt"], description="Formats for jobs made from bucket drops and the sweep."
    )
    sweep_interval_s: float = Field(300.0, gt=0, description="Period of `funasr-fleet sweep` without --once.")
    sweep_recent_s: float = Field(
        3600.0, ge=0, description="The sweep skips objects it (or an event) enqueued less than this long ago."
    )


class JobsSettings(_Section):
    status: bool = Field(
        True,
        description="Record each job's status in `_fleet/jobs/<job_id>.json` (results bucket): written by publishers, "
        "consumers and the announcer; read by `funasr-fleet status`.",
    )
    status_history: int = Field(32, ge=1, description="Transitions kept in a status object (oldest dropped).")
    cancel_grace_s: float = Field(
        10.0,
        gt=0,
        description="A running job told to cancel has this long to reach a stage boundary; then its consumer abandons "
        "the model call and exits (replaced, not counted as a crash).",
    )
    cancel_poll_s: float = Field(
        15.0,
        gt=0,
        description="A busy consumer re-reads the job's cancel marker this often (the broadcast is the fast path).",
    )


class WebhookSubscription(BaseModel):
    """One fleet-wide receiver: every event whose type matches ``events`` is POSTed to ``url``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="https URL of the receiver.")
    events: list[str] = Field(
        default_factory=lambda: ["job.*"], description="Event routing keys or patterns: job.succeeded, job.*."
    )


class WebhookSettings(_Section):
    subscriptions: list[WebhookSubscription] = Field(
        default_factory=list,
        description='Fleet-wide receivers, e.g. [{url = "https://hooks.example.com/asr", events = ["job.succeeded"]}].',
    )
    callback_events: list[str] = Field(
        default_factory=lambda: ["job.succeeded", "job.failed", "job.cancelled"],
        description="Events POSTed to a job's own `callback` URL.",
    )
    secret: SecretStr | None = Field(None, description="Signing secret (whsec_<base64>, Standard Webhooks). Secret.")
    secret_file: Path | None = Field(None, description="File holding the signing secret (Kubernetes secret mount).")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts webhooks may go to: exact names or *.domain; empty = any host (still public addresses only).",
    )
    allow_private_networks: bool = Field(
        False,
        description="Allow private, loopback, link-local and other non-global addresses (never for job callbacks you do not trust).",
    )
    retry_schedule_s: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        description="Delay before each retry of a failed delivery (about 22 h in all); then the webhook dead-letter queue.",
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="Connect timeout of one delivery.")
    timeout_s: float = Field(
        15.0, gt=0, description="Total time one delivery may take (a slower receiver is retried later)."
    )
    ca_file: Path | None = Field(
        None, description="Extra CA bundle (PEM) trusted besides the system's, for receivers with a private CA."
    )
    queue_prefix: str = Field(
        "fleet.webhooks",
        description="Names of the relay's exchange and queues: <prefix>.events, .deliveries, .delay.<ms>ms, .dlq.",
    )
    concurrency: int = Field(4, ge=1, le=64, description="Deliveries one `funasr-fleet notify` process makes at once.")
    max_backlog: int = Field(
        1_000_000,
        ge=1,
        description="Events waiting for the relay beyond this go to its dead-letter queue (never slow the consumers).",
    )

    @field_validator("retry_schedule_s")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value):
            raise ValueError("retry delays must be positive")
        return value

    def signing_secret(self) -> str | None:
        """The secret's value, from the variable or from its file (None when neither is set)."""
        if self.secret is not None:
            return self.secret.get_secret_value()
        if self.secret_file is not None:
            return self.secret_file.read_text().strip()
        return None


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto = console on a TTY, JSON lines otherwise."
    )


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
