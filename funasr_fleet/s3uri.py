"""S3 locations in job messages: ``s3://bucket/key`` URIs parsed literally, and output prefixes that cannot escape."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict

from funasr_fleet.errors import BadS3Uri, OutputPrefixInvalid

# S3 bucket naming rules (lowercase, digits, dots, hyphens; 3..63).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class S3Location(BaseModel):
    """An S3 object or prefix: ``bucket`` and ``key`` (the key literal, never percent-decoded)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        """``s3://bucket/key``; ``parse_s3_uri`` reads it back to this location."""
        return f"s3://{self.bucket}/{self.key}"

    def __str__(self) -> str:
        return self.uri


S3_SCHEME = "s3://"
MAX_KEY_BYTES = 1024


def parse_s3_uri(value: str | dict[str, Any] | S3Location, *, allow_empty_key: bool = False) -> S3Location:
    """``s3://bucket/key`` or ``{"bucket": ..., "key": ...}`` → S3Location, or BadS3Uri.

    The key rule (as the AWS CLI reads ``s3://`` URIs): everything after the first ``/`` behind the
    bucket is the key, LITERALLY: ``#``, ``?``, ``%``, ``+``, spaces and any UTF-8 are key
    characters, nothing is percent-decoded, nothing is a query or fragment. So every key S3 accepts
    can be named, and ``parse_s3_uri(loc.uri) == loc`` for every S3Location. The scheme is
    ``s3://`` (any case); the bucket must follow S3's naming rules; the key is at most 1,024 bytes
    of UTF-8 and may be empty only with ``allow_empty_key`` (an output prefix).
    """
    if isinstance(value, S3Location):
        bucket, key = value.bucket, value.key
    elif isinstance(value, dict):
        raw_bucket, raw_key = value.get("bucket"), value.get("key", value.get("prefix", ""))
        if not isinstance(raw_bucket, str) or not isinstance(raw_key, str):
            raise BadS3Uri(f"S3 location needs string bucket and key: {value!r}")
        bucket, key = raw_bucket, raw_key
    elif isinstance(value, str):
        if value[: len(S3_SCHEME)].lower() != S3_SCHEME:
            raise BadS3Uri(f"not an s3://bucket/key URI: {value[:200]!r}")
        bucket, _, key = value[len(S3_SCHEME) :].partition("/")
    else:
        raise BadS3Uri(f"S3 location must be a string or an object, not {type(value).__name__}")
    if not _BUCKET.match(bucket or ""):
        raise BadS3Uri(f"invalid bucket name {bucket[:80]!r}")
    if not key and not allow_empty_key:
        raise BadS3Uri(f"S3 location has no key: s3://{bucket}/")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadS3Uri("S3 key is not valid UTF-8 (a lone surrogate)") from None
    if size > MAX_KEY_BYTES:
        raise BadS3Uri(f"S3 key longer than {MAX_KEY_BYTES} bytes")
    return S3Location(bucket=bucket, key=key)


def safe_prefix(prefix: str) -> str:
    """A key prefix that cannot escape: no absolute path, no ``..``/``.`` segments, no empty segments."""
    if prefix.startswith("/") or "\\" in prefix or "\x00" in prefix:
        raise OutputPrefixInvalid(f"output prefix must be relative: {prefix!r}")
    segments = [s for s in prefix.split("/")]
    if segments and segments[-1] == "":
        segments = segments[:-1]
    for seg in segments:
        if seg in ("", ".", ".."):
            raise OutputPrefixInvalid(f"output prefix has an empty, '.' or '..' segment: {prefix!r}")
    return "/".join(segments)
