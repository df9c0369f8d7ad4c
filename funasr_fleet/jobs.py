"""The job request: the one message schema upstream services publish (versioned).

Parsing turns every way a body can be wrong into a FleetError with a stable code, so the
consumer can publish a precise failed event and dead-letter the message.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from funasr_fleet.engine import hotwords
from funasr_fleet.engine.transcript import TranscribeOptions
from funasr_fleet.errors import (
    BucketNotAllowed,
    MalformedMessage,
    SchemaInvalid,
    UnsupportedFormat,
    UnsupportedSchemaVersion,
)
from funasr_fleet.keys import join_key
from funasr_fleet.s3uri import S3Location, parse_s3_uri, safe_prefix  # the first two still public from here
from funasr_fleet.settings import ALL_FORMATS, Settings
from funasr_fleet.webhooks.policy import check_host, check_url

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
MAX_BODY_BYTES = 256 * 1024
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_SPEAKERS = 32
_ADDED_DEFAULTS: dict[str, Any] = {"min_speakers": None, "max_speakers": None, "channels": "auto"}
"""Options added after the first release, with their defaults. A dump leaves them out while they
hold these defaults, so the derived job id, ``options_hash`` and the result-reuse key of a body
written before they existed do not change (changing those would re-run every such job)."""


class JobOptions(BaseModel):
    """How to transcribe. ``num_speakers`` (exact) and ``min_speakers``/``max_speakers`` (an
    inclusive range) are exclusive; ``channels``: ``auto`` | ``mix`` | ``split`` (see
    ``engine.transcript.ChannelMode``)."""

    model_config = ConfigDict(extra="forbid")

    hotwords: list[str] = Field(
        default_factory=list,
        description=f"Phrases to boost (hotword-capable models). At most {hotwords.MAX_HOTWORDS} entries of at most "
        f"{hotwords.MAX_HOTWORD_CHARS} characters; stored normalised (whitespace runs → one space, blanks and "
        "duplicates dropped). Each entry is one hotword, never a URL or file to fetch.",
    )
    diarize: bool = True
    num_speakers: int | None = Field(None, ge=1, le=MAX_SPEAKERS)
    language: str | None = Field(None, max_length=16)
    min_speakers: int | None = Field(None, ge=1, le=MAX_SPEAKERS)
    max_speakers: int | None = Field(None, ge=1, le=MAX_SPEAKERS)
    channels: Literal["auto", "mix", "split"] = "auto"

    @model_validator(mode="after")
    def _speaker_counts(self) -> JobOptions:
        ranged = self.min_speakers is not None or self.max_speakers is not None
        if self.num_speakers is not None and ranged:
            raise ValueError(
                "num_speakers (an exact count) cannot be combined with min_speakers/max_speakers (a range); "
                "send one or the other"
            )
        if self.min_speakers is not None and self.max_speakers is not None and self.min_speakers > self.max_speakers:
            raise ValueError(f"min_speakers ({self.min_speakers}) is greater than max_speakers ({self.max_speakers})")
        return self

    def transcribe_options(self) -> TranscribeOptions:
        """The engine's options for this job."""
        return TranscribeOptions(
            hotwords=tuple(self.hotwords),
            diarize=self.diarize,
            num_speakers=self.num_speakers,
            language=self.language,
            min_speakers=self.min_speakers,
            max_speakers=self.max_speakers,
            channels=self.channels,
        )

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name, default in _ADDED_DEFAULTS.items():
            if name in data and data[name] == default:
                del data[name]
        return data

    @field_validator("hotwords", mode="before")
    @classmethod
    def _hotwords(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value  # pydantic names the type error
        return hotwords.sanitize(value)  # HotwordsInvalid is a ValueError → schema_invalid


class JobRequest(BaseModel):
    """What to transcribe, where to put the results, and how."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    job_id: str | None = Field(None, description="Idempotency key; derived from the body when absent.")
    audio: S3Location
    output: S3Location | None = Field(None, description="Bucket + prefix; default results bucket/prefix/job_id.")
    formats: list[str] = Field(default_factory=list, description="Output formats; empty = settings default.")
    options: JobOptions = Field(default_factory=JobOptions)
    metadata: dict[str, Any] = Field(default_factory=dict, description="Passed through to every event.")
    delete_source: bool | None = None
    callback: str | None = Field(
        None, description="https URL the job's final event is POSTed to (Standard Webhooks, by `funasr-fleet notify`)."
    )

    @field_validator("schema_version")
    @classmethod
    def _version(cls, value: int) -> int:
        if value not in SUPPORTED_SCHEMA_VERSIONS:
            raise UnsupportedSchemaVersion(
                f"schema_version {value} is not supported (supported: {sorted(SUPPORTED_SCHEMA_VERSIONS)})"
            )
        return value

    @field_validator("job_id")
    @classmethod
    def _job_id(cls, value: str | None) -> str | None:
        if value is not None and not JOB_ID_RE.match(value):
            raise ValueError("job_id must be 1-128 characters of [A-Za-z0-9._-], starting alphanumeric")
        return value

    @field_validator("audio", mode="before")
    @classmethod
    def _audio(cls, value: Any) -> S3Location:
        return parse_s3_uri(value)

    @field_validator("output", mode="before")
    @classmethod
    def _output(cls, value: Any) -> S3Location | None:
        if value is None:
            return None
        loc = parse_s3_uri(value, allow_empty_key=True)
        return S3Location(bucket=loc.bucket, key=safe_prefix(loc.key))

    @field_validator("formats")
    @classmethod
    def _formats(cls, value: list[str]) -> list[str]:
        normalised = [f.strip().lower() for f in value]
        unknown = [f for f in normalised if f not in ALL_FORMATS]
        if unknown:
            raise UnsupportedFormat(f"unsupported format(s) {unknown}; supported: {list(ALL_FORMATS)}")
        return list(dict.fromkeys(normalised))

    @field_validator("callback")
    @classmethod
    def _callback(cls, value: str | None) -> str | None:
        if value is not None:
            check_url(value)  # CallbackInvalid: a permanent error at validation, not at the end of the job
        return value

    @model_validator(mode="after")
    def _fill_id(self) -> JobRequest:
        if self.job_id is None:
            self.job_id = derived_job_id(self)
        return self

    def output_location(self, settings: Settings) -> S3Location:
        if self.output is not None:
            return self.output
        base = safe_prefix(settings.s3.results_prefix) if settings.s3.results_prefix else ""
        return S3Location(bucket=settings.s3.results_bucket, key=join_key(base, str(self.job_id)))

    def effective_formats(self, settings: Settings) -> list[str]:
        return self.formats or list(settings.outputs.default_formats)

    def to_body(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


def derived_job_id(job: JobRequest) -> str:
    """Deterministic id for a request without one: the same body always gets the same id.

    Like ``metadata``, ``callback`` says whom to tell, not what to do: it does not change the id.
    """
    canon = job.model_dump(mode="json", exclude={"job_id", "metadata", "callback"})
    digest = hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()
    return f"j-{digest[:32]}"


def job_id_for_object(bucket: str, key: str, etag: str) -> str:
    """Deterministic id of a bucket drop: the same object version announced twice is one job."""
    clean_etag = etag.strip('"')
    digest = hashlib.sha256(f"{bucket}\x00{key}\x00{clean_etag}".encode()).hexdigest()
    return f"s3-{digest[:32]}"


def parse_job(body: bytes, settings: Settings | None = None) -> JobRequest:
    """Bytes off the wire → JobRequest, or the FleetError saying exactly what is wrong."""
    return validate_job(decode_body(body), settings)


def decode_body(body: bytes) -> dict[str, Any]:
    """Bytes off the wire → a JSON object (job request or bucket notification), or MalformedMessage."""
    if len(body) > MAX_BODY_BYTES:
        raise SchemaInvalid(f"message body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedMessage(f"body must be a JSON object, not {type(data).__name__}")
    return data


def validate_job(data: dict[str, Any], settings: Settings | None = None) -> JobRequest:
    try:
        job = JobRequest.model_validate(data)
    except ValidationError as exc:
        raise SchemaInvalid(describe_errors(exc)) from None
    if settings is not None:
        check_allowed(job, settings)
    return job


def check_allowed(job: JobRequest, settings: Settings) -> None:
    """The settings' allow-lists: buckets (BucketNotAllowed) and the callback's host (CallbackNotAllowed)."""
    if job.callback is not None:
        hooks = settings.webhooks
        target = check_url(job.callback)
        check_host(target, allowed_hosts=hooks.allowed_hosts, allow_private=hooks.allow_private_networks)
    allowed = settings.s3.allowed_buckets
    if not allowed:
        return
    if job.audio.bucket not in allowed:
        raise BucketNotAllowed(f"bucket {job.audio.bucket!r} is not in the allow-list")
    if job.output is not None and job.output.bucket not in [*allowed, settings.s3.results_bucket]:
        raise BucketNotAllowed(f"output bucket {job.output.bucket!r} is not in the allow-list")


def describe_errors(exc: ValidationError, root: str = "(body)") -> str:
    """A pydantic ValidationError as one line naming each wrong field (``options.min_speakers: ...``);
    an error of the whole model is named ``root``."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or root
        parts.append(f"{loc}: {str(err['msg']).removeprefix('Value error, ')}")
    return "; ".join(parts)


Kind = Literal["job", "s3-event"]


def message_kind(data: dict[str, Any]) -> Kind:
    """Bucket-notification records (MinIO/S3 event) vs a job request."""
    return "s3-event" if "Records" in data or "EventName" in data else "job"
