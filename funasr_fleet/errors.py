"""One small error tree. Every failure a job can meet maps to a stable ``code``.

``permanent`` errors dead-letter at once (retrying cannot help); transient ones are retried
with backoff until the attempts run out. Codes are a public contract (events, docs, CLI exit
messages): never rename one.
"""

from __future__ import annotations


class FleetError(Exception):
    code: str = "internal_error"
    permanent: bool = True

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(FleetError):
    """Settings are invalid."""

    code = "config_invalid"


class BootFailure(FleetError):
    """The consumer could not get ready (broker unreachable past the boot timeout, model load)."""

    code = "boot_failed"


class InternalError(FleetError):
    """An unexpected exception inside a job (a bug or an unforeseen input); retried, bounded by attempts."""

    code = "internal_error"
    permanent = False


class JobCancelled(FleetError):
    """The consumer loop gave up on this job (deadline passed or forced stop); its result must not be committed."""

    code = "cancelled"
    permanent = False


# --- job request -------------------------------------------------------------------------------
class JobError(FleetError):
    """The job request cannot be run as given."""

    code = "job_invalid"


class MalformedMessage(JobError):
    """The message body is not a JSON object."""

    code = "malformed_message"


class SchemaInvalid(JobError):
    """The job request does not match the schema."""

    code = "schema_invalid"


class UnsupportedSchemaVersion(JobError):
    """The job request has a schema version this consumer does not know."""

    code = "unsupported_schema_version"


class BadS3Uri(JobError):
    """An S3 location is not a valid s3://bucket/key."""

    code = "bad_s3_uri"


class BucketNotAllowed(JobError):
    """The bucket is not in the allow-list."""

    code = "bucket_not_allowed"


class OutputPrefixInvalid(JobError):
    """The output location escapes its bucket/prefix."""

    code = "output_prefix_invalid"


class UnsupportedFormat(JobError):
    """An output format name is unknown."""

    code = "unsupported_format"


class CallbackInvalid(JobError):
    """The job's ``callback`` is not an https URL the fleet can call (syntax, scheme, credentials, length)."""

    code = "callback_invalid"


class CallbackNotAllowed(JobError):
    """The job's ``callback`` names a host outside ``webhooks.allowed_hosts`` or a non-public address."""

    code = "callback_not_allowed"


# --- storage -----------------------------------------------------------------------------------
class StorageError(FleetError):
    """S3 failed."""

    code = "storage_error"


class ObjectNotFound(StorageError):
    """The audio object does not exist."""

    code = "object_not_found"


class ObjectTooLarge(StorageError):
    """The audio object is larger than the configured maximum."""

    code = "object_too_large"


class EmptyObject(StorageError):
    """The audio object has zero bytes."""

    code = "empty_object"


class WriteConflict(StorageError):
    """A conditional write lost: the object exists (if_none_match) or changed (if_match)."""

    code = "storage_write_conflict"


class StorageUnavailable(StorageError):
    """S3 is unreachable or answered 5xx/timeout; worth retrying."""

    code = "storage_unavailable"
    permanent = False


# --- broker ------------------------------------------------------------------------------------
class BrokerUnavailable(FleetError):
    """The broker connection was lost or a publish was not confirmed; worth retrying."""

    code = "broker_unavailable"
    permanent = False


# --- audio / engine ----------------------------------------------------------------------------
class AudioError(FleetError):
    """The audio cannot be transcribed."""

    code = "audio_invalid"


class UndecodableAudio(AudioError):
    """The file is not a media file that can be decoded."""

    code = "undecodable_audio"


class NoAudioStream(AudioError):
    """The media file has no audio stream."""

    code = "no_audio_stream"


class EmptyAudio(AudioError):
    """The audio stream holds no samples."""

    code = "empty_audio"


class AudioTooShort(AudioError):
    """The audio is shorter than the configured minimum."""

    code = "audio_too_short"


class AudioTooLong(AudioError):
    """The audio is longer than the configured maximum."""

    code = "audio_too_long"


class TooManyChannels(AudioError):
    """The audio has more channels than the engine handles (at most 8)."""

    code = "too_many_channels"


class EngineError(FleetError):
    """The model failed on this input."""

    code = "engine_error"


class ModelLoadError(FleetError):
    """A model could not be loaded (bad name/path, missing files)."""

    code = "model_load_failed"


class JobTimeout(FleetError):
    """The job ran past its deadline; retried (the consumer restarts, so the next attempt gets a fresh one)."""

    code = "timeout"
    permanent = False


# --- not job failures ----------------------------------------------------------------------------
class TranscriptParseError(ValueError):
    """A JSON document is not a funasr-fleet transcript this version can read.

    A ValueError, not a FleetError: it is raised by a reader (``outputs.parse_json``), never ends a
    job by itself, and callers that read untrusted documents catch ValueError.
    """


class SpawnError(Exception):
    """The zygote (``supervisor.preload = "fork"``) could not fork a consumer: it answered an error or nothing.

    ``zygote_unresponsive``: the zygote is of no further use (silent, gone, or unsafe to fork) and
    the supervisor replaces it. Never leaves the supervisor, so it has no code.
    """

    def __init__(self, message: str, *, zygote_unresponsive: bool = False) -> None:
        super().__init__(message)
        self.zygote_unresponsive = zygote_unresponsive


# --- job life cycle ------------------------------------------------------------------------------
class DeliveryLimitExceeded(FleetError):
    """The broker dead-lettered the job: its consumer died (crash, OOM kill, hang) on every delivery."""

    code = "delivery_limit_exceeded"


class JobWasCancelled(FleetError):
    """The job was cancelled (``funasr-fleet cancel`` / ``Client.cancel``) before it finished."""

    code = "job_cancelled"
