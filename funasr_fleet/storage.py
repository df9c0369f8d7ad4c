"""S3 access for the fleet: streamed downloads/uploads, small JSON objects, listings.

The only module that imports boto3. Every S3 failure leaves here as a ``funasr_fleet.errors``
error so callers decide retry vs dead-letter by ``permanent`` alone:
missing key/bucket → ObjectNotFound; 5xx, throttling, timeouts, refused/reset connections →
StorageUnavailable (transient); access denied, bad keys and other 4xx → StorageError (permanent).
Credentials come from ``S3Settings.credential`` and never reach a log line.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import structlog
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from funasr_fleet.errors import (
    EmptyObject,
    ObjectNotFound,
    ObjectTooLarge,
    StorageError,
    StorageUnavailable,
)
from funasr_fleet.errors import WriteConflict as WriteConflict  # re-exported: callers catch it from here
from funasr_fleet.settings import S3Settings

log = structlog.get_logger(__name__)

PART_SIZE = 8 * 1024 * 1024  # multipart above this; also the part size (S3 minimum is 5 MiB)
READ_CHUNK = 1024 * 1024
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchVersion"})
_TRANSIENT = frozenset(
    {
        "500",
        "502",
        "503",
        "504",
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "Throttling",
        "ThrottlingException",
        "OperationAborted",
    }
)
_DENIED = frozenset(
    {
        "403",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidToken",
        "ExpiredToken",
    }
)


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


def _clean_etag(etag: str | None) -> str:
    return (etag or "").strip('"')


def _json_object(raw: bytes, bucket: str, key: str) -> dict[str, Any]:
    """The JSON object in ``raw`` (the body of s3://bucket/key); StorageError(storage_invalid_json) otherwise."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StorageError(f"s3://{bucket}/{key} is not valid JSON: {exc}", code="storage_invalid_json") from None
    if not isinstance(data, dict):
        raise StorageError(f"s3://{bucket}/{key} is not a JSON object", code="storage_invalid_json")
    return data


def translate(exc: BaseException, *, op: str, bucket: str, key: str | None = None) -> StorageError:
    """Map a boto/urllib3/socket failure onto the fleet's error tree."""
    where = f"s3://{bucket}/{key}" if key is not None else f"s3://{bucket}"
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {}) or {}
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _NOT_FOUND or status == 404:
            what = "bucket" if code == "NoSuchBucket" else "object"
            return ObjectNotFound(f"{op}: {what} not found: {where}")
        if code in _TRANSIENT or status >= 500 or status == 429:
            return StorageUnavailable(f"{op} {where}: S3 answered {status} {code}")
        if code in _DENIED or status == 403:
            return StorageError(f"{op} {where}: access denied ({code or status})", code="storage_access_denied")
        if code == "PreconditionFailed" or status == 412:
            return StorageUnavailable(f"{op} {where}: object changed while reading ({code})")
        return StorageError(f"{op} {where}: S3 error {status} {code}", code="storage_request_failed")
    if isinstance(exc, (BotoCoreError, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, OSError)):
        # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError,
        # ResponseStreamingError, IncompleteReadError, ProtocolError, socket errors...
        return StorageUnavailable(f"{op} {where}: S3 unreachable ({type(exc).__name__}: {exc})")
    return StorageError(f"{op} {where}: {type(exc).__name__}: {exc}")


@contextmanager
def _s3_errors(op: str, bucket: str, key: str | None = None) -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
    except (ClientError, BotoCoreError, urllib3.exceptions.HTTPError, OSError) as exc:
        raise translate(exc, op=op, bucket=bucket, key=key) from exc


class Storage:
    """One boto3 client configured from S3Settings (thread-safe; share it within a process)."""

    def __init__(self, s3: S3Settings) -> None:
        self.settings = s3
        config = Config(
            region_name=s3.region,
            connect_timeout=s3.connect_timeout_s,
            read_timeout=s3.read_timeout_s,
            retries={"max_attempts": s3.max_attempts, "mode": "standard"},
            s3={"addressing_style": s3.addressing_style},
            signature_version="s3v4",
            # S3-compatible servers (SeaweedFS, older MinIO) choke on the default flexible checksums.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session(
            aws_access_key_id=s3.credential("access_key"),
            aws_secret_access_key=s3.credential("secret_key"),
            region_name=s3.region,
        )
        self._client: Any = session.client("s3", endpoint_url=s3.endpoint_url, config=config)

    def __repr__(self) -> str:  # never show credentials
        return f"Storage(endpoint_url={self.settings.endpoint_url!r})"

    # --- objects --------------------------------------------------------------------------------
    def head(self, bucket: str, key: str) -> ObjectInfo:
        with _s3_errors("head", bucket, key):
            resp = self._client.head_object(Bucket=bucket, Key=key)
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=int(resp.get("ContentLength", 0)),
            etag=_clean_etag(resp.get("ETag")),
            version_id=resp.get("VersionId") or None,
            last_modified=resp.get("LastModified"),
            metadata=dict(resp.get("Metadata") or {}),
        )

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.head(bucket, key)
        except ObjectNotFound:
            return False
        return True

    def download(self, bucket: str, key: str, dest: Path, *, max_bytes: int) -> Downloaded:
        """Stream the object to ``dest``, hashing while writing; size limits checked before and during."""
        info = self.head(bucket, key)
        if info.size > max_bytes:
            raise ObjectTooLarge(f"s3://{bucket}/{key} is {info.size} bytes; the limit is {max_bytes}")
        if info.size == 0:
            raise EmptyObject(f"s3://{bucket}/{key} has zero bytes")
        extra: dict[str, str] = {}
        if info.version_id and info.version_id != "null":
            extra["VersionId"] = info.version_id
        elif info.etag:
            extra["IfMatch"] = f'"{info.etag}"'
        digest = hashlib.sha256()
        written = 0
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with _s3_errors("download", bucket, key):
                resp = self._client.get_object(Bucket=bucket, Key=key, **extra)
            body = resp["Body"]
            try:
                with open(dest, "wb") as out:
                    chunks = body.iter_chunks(READ_CHUNK)
                    while True:
                        with _s3_errors("download", bucket, key):
                            chunk = next(chunks, None)
                        if chunk is None:
                            break
                        written += len(chunk)
                        if written > max_bytes:
                            raise ObjectTooLarge(f"s3://{bucket}/{key} grew past the limit of {max_bytes} bytes")
                        digest.update(chunk)
                        out.write(chunk)
            finally:
                body.close()
            expected = int(resp.get("ContentLength", written))
            if written != expected:
                raise StorageUnavailable(f"s3://{bucket}/{key}: got {written} of {expected} bytes")
            if written == 0:
                raise EmptyObject(f"s3://{bucket}/{key} has zero bytes")
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        got = ObjectInfo(
            bucket=bucket,
            key=key,
            size=written,
            etag=_clean_etag(resp.get("ETag")) or info.etag,
            version_id=resp.get("VersionId") or info.version_id,
            last_modified=resp.get("LastModified") or info.last_modified,
            metadata=dict(resp.get("Metadata") or info.metadata),
        )
        log.debug("storage.downloaded", uri=got.uri, size=written)
        return Downloaded(info=got, path=dest, sha256=digest.hexdigest())

    def get_bytes(self, bucket: str, key: str) -> bytes:
        with _s3_errors("get", bucket, key):
            resp = self._client.get_object(Bucket=bucket, Key=key)
            body = resp["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

    def get_json(self, bucket: str, key: str) -> dict[str, Any] | None:
        """The JSON object stored at the key, or None when there is none."""
        try:
            raw = self.get_bytes(bucket, key)
        except ObjectNotFound:
            return None
        return _json_object(raw, bucket, key)

    def get_json_versioned(self, bucket: str, key: str) -> tuple[dict[str, Any] | None, str | None]:
        """``(object, etag)`` of a small JSON object, or ``(None, None)``; the etag feeds ``put_json(if_match=)``."""
        try:
            with _s3_errors("get", bucket, key):
                resp = self._client.get_object(Bucket=bucket, Key=key)
                body = resp["Body"]
                try:
                    raw = bytes(body.read())
                finally:
                    body.close()
        except ObjectNotFound:
            return None, None
        return _json_object(raw, bucket, key), _clean_etag(resp.get("ETag"))

    def put_bytes(
        self,
        bucket: str,
        key: str,
        data: bytes | str,
        *,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo:
        """PUT one object. ``if_none_match``: only create; ``if_match``: only replace that etag (else WriteConflict)."""
        body = data.encode() if isinstance(data, str) else bytes(data)
        extra: dict[str, str] = {}
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        if if_match is not None:
            extra["IfMatch"] = f'"{_clean_etag(if_match)}"'
        try:
            with _s3_errors("put", bucket, key):
                resp = self._client.put_object(
                    Bucket=bucket, Key=key, Body=body, ContentType=content_type, Metadata=metadata or {}, **extra
                )
        except StorageError as exc:
            cause = exc.__cause__
            if extra and isinstance(cause, ClientError):
                status = int(cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
                code = str(cause.response.get("Error", {}).get("Code", ""))
                if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise WriteConflict(f"put s3://{bucket}/{key}: precondition failed ({code or status})") from exc
            raise
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=len(body),
            etag=_clean_etag(resp.get("ETag")),
            version_id=resp.get("VersionId") or None,
            metadata=dict(metadata or {}),
        )

    def put_json(
        self,
        bucket: str,
        key: str,
        data: Any,
        *,
        metadata: dict[str, str] | None = None,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo:
        body = json.dumps(data, ensure_ascii=False, indent=2, default=str).encode()
        return self.put_bytes(
            bucket,
            key,
            body,
            content_type="application/json",
            metadata=metadata,
            if_none_match=if_none_match,
            if_match=if_match,
        )

    def upload_chunks(
        self,
        bucket: str,
        key: str,
        chunks: Iterable[str | bytes],
        *,
        content_type: str,
        metadata: dict[str, str] | None = None,
    ) -> ObjectInfo:
        """Stream text/bytes chunks: a single PUT when it all fits in one part, multipart otherwise."""
        buffer = bytearray()
        parts: list[dict[str, Any]] = []
        upload_id: str | None = None
        total = 0
        try:
            for chunk in chunks:
                data = chunk.encode() if isinstance(chunk, str) else chunk
                buffer += data
                total += len(data)
                while len(buffer) > PART_SIZE:  # more than one part's worth: it will be multipart
                    if upload_id is None:
                        with _s3_errors("upload", bucket, key):
                            upload_id = self._client.create_multipart_upload(
                                Bucket=bucket, Key=key, ContentType=content_type, Metadata=metadata or {}
                            )["UploadId"]
                    part, buffer = bytes(buffer[:PART_SIZE]), buffer[PART_SIZE:]
                    parts.append(self._upload_part(bucket, key, upload_id, len(parts) + 1, part))
            if upload_id is None:
                return self.put_bytes(bucket, key, bytes(buffer), content_type=content_type, metadata=metadata)
            if buffer:
                parts.append(self._upload_part(bucket, key, upload_id, len(parts) + 1, bytes(buffer)))
            with _s3_errors("upload", bucket, key):
                resp = self._client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            if upload_id is not None:
                self._abort(bucket, key, upload_id)
            raise
        log.debug("storage.uploaded", uri=f"s3://{bucket}/{key}", size=total, parts=len(parts))
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=total,
            etag=_clean_etag(resp.get("ETag")),
            version_id=resp.get("VersionId") or None,
            metadata=dict(metadata or {}),
        )

    def _upload_part(self, bucket: str, key: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        with _s3_errors("upload", bucket, key):
            resp = self._client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)
        return {"PartNumber": number, "ETag": resp["ETag"]}

    def _abort(self, bucket: str, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except Exception as exc:  # noqa: BLE001 - best effort: a lifecycle rule reaps what is left
            log.warning("storage.abort_failed", uri=f"s3://{bucket}/{key}", error=type(exc).__name__)

    def upload_file(
        self,
        path: Path | str,
        bucket: str,
        key: str,
        *,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> ObjectInfo:
        """Upload a local file in PART_SIZE chunks (argument order as boto3's upload_file)."""

        def read() -> Iterator[bytes]:
            with open(path, "rb") as fh:
                while block := fh.read(PART_SIZE):
                    yield block

        ctype = content_type or content_type_for(str(path))
        return self.upload_chunks(bucket, key, read(), content_type=ctype, metadata=metadata)

    def copy(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str) -> ObjectInfo:
        """Server-side copy (objects up to 5 GiB; outputs and audio are far smaller)."""
        with _s3_errors("copy", src_bucket, src_key):
            self._client.copy_object(Bucket=dst_bucket, Key=dst_key, CopySource={"Bucket": src_bucket, "Key": src_key})
        return self.head(dst_bucket, dst_key)

    def delete(self, bucket: str, key: str) -> None:
        """Delete one object; deleting a missing key is not an error (S3 semantics)."""
        with _s3_errors("delete", bucket, key):
            self._client.delete_object(Bucket=bucket, Key=key)

    # --- listings -------------------------------------------------------------------------------
    def list_objects(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (recursively), page by page."""
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=bucket, Prefix=prefix)
        iterator = iter(pages)
        while True:
            with _s3_errors("list", bucket, prefix):
                page = next(iterator, None)
            if page is None:
                return
            for item in page.get("Contents", []) or []:
                yield ObjectInfo(
                    bucket=bucket,
                    key=item["Key"],
                    size=int(item.get("Size", 0)),
                    etag=_clean_etag(item.get("ETag")),
                    last_modified=item.get("LastModified"),
                )

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many."""
        count = 0
        batch: list[dict[str, str]] = []
        for info in self.list_objects(bucket, prefix):
            batch.append({"Key": info.key})
            if len(batch) == 1000:
                count += self._delete_batch(bucket, batch)
                batch = []
        if batch:
            count += self._delete_batch(bucket, batch)
        return count

    def _delete_batch(self, bucket: str, batch: list[dict[str, str]]) -> int:
        with _s3_errors("delete", bucket):
            resp = self._client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        errors = resp.get("Errors") or []
        if errors:
            first = errors[0]
            raise StorageError(
                f"delete s3://{bucket}/{first.get('Key')}: {first.get('Code')} ({len(errors)} failed)",
                code="storage_request_failed",
            )
        return len(batch)

    # --- buckets --------------------------------------------------------------------------------
    def ensure_bucket(self, bucket: str) -> None:
        """Create the bucket unless it exists already (idempotent)."""
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if self.settings.region and self.settings.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.region}
        try:
            with _s3_errors("create_bucket", bucket):
                self._client.create_bucket(**kwargs)
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                return
            raise

    def bucket_exists(self, bucket: str) -> bool:
        try:
            with _s3_errors("head_bucket", bucket):
                self._client.head_bucket(Bucket=bucket)
        except ObjectNotFound:
            return False
        return True

    def delete_bucket(self, bucket: str) -> None:
        """Empty and delete a bucket (tests and the demo teardown); a missing bucket is fine."""
        try:
            self.delete_prefix(bucket, "")
            with _s3_errors("delete_bucket", bucket):
                self._client.delete_bucket(Bucket=bucket)
        except ObjectNotFound:
            return


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
