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
    """The job ran past its deadline."""

    code = "timeout"
