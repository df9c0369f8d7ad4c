"""What the storage layer hands back: object descriptions, downloaded files, and the small parsers they need."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from funasr_fleet.errors import StorageError


@dataclass(frozen=True)
class ObjectInfo:
    """What S3 says about one object (from HEAD, a listing, or our own upload)."""

    bucket: str
    key: str
    size: int
    etag: str
    version_id: str | None = None
    last_modified: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class Downloaded:
    """A fetched object on local disk, with the SHA-256 of exactly the bytes written."""

    info: ObjectInfo
    path: Path
    sha256: str


def clean_etag(etag: str | None) -> str:
    """An ETag without the quotes S3 wraps it in (``""`` for none)."""
    return (etag or "").strip('"')


def json_object(raw: bytes, bucket: str, key: str) -> dict[str, Any]:
    """The JSON object in ``raw`` (the body of s3://bucket/key); StorageError(storage_invalid_json) otherwise."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StorageError(f"s3://{bucket}/{key} is not valid JSON: {exc}", code="storage_invalid_json") from None
    if not isinstance(data, dict):
        raise StorageError(f"s3://{bucket}/{key} is not a JSON object", code="storage_invalid_json")
    return data


def content_type_for(name: str) -> str:
    """A reasonable Content-Type from a file name (outputs and uploaded audio)."""
    ext = os.path.splitext(name)[1].lower()
    return _CONTENT_TYPES.get(ext, "application/octet-stream")


_CONTENT_TYPES = {
    ".json": "application/json",
    ".srt": "application/x-subrip; charset=utf-8",
    ".vtt": "text/vtt; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".rttm": "text/plain; charset=utf-8",
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".opus": "audio/opus",
    ".webm": "audio/webm",
    ".mp4": "video/mp4",
    ".mov": "video/quicktime",
}
