"""S3 access for the fleet: streamed downloads/uploads, small JSON objects, listings.

The only module that imports boto3 (``s3errors`` maps botocore's failures, ``streaming`` drives the
client it is handed). Every S3 failure leaves here as a ``funasr_fleet.errors`` error so callers
decide retry vs dead-letter by ``permanent`` alone (the mapping: ``funasr_fleet.s3errors``).
Credentials come from ``S3Settings.credential`` and never reach a log line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from funasr_fleet import streaming
from funasr_fleet.errors import ObjectNotFound, StorageError
from funasr_fleet.errors import WriteConflict as WriteConflict  # re-exported: callers catch it from here
from funasr_fleet.s3errors import s3_errors
from funasr_fleet.s3objects import Downloaded, ObjectInfo, clean_etag, content_type_for, json_object
from funasr_fleet.settings import S3Settings


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
        with s3_errors("head", bucket, key):
            resp = self._client.head_object(Bucket=bucket, Key=key)
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=int(resp.get("ContentLength", 0)),
            etag=clean_etag(resp.get("ETag")),
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
        return streaming.download(self._client, self.head(bucket, key), dest, max_bytes=max_bytes)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        with s3_errors("get", bucket, key):
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
        return json_object(raw, bucket, key)

    def get_json_versioned(self, bucket: str, key: str) -> tuple[dict[str, Any] | None, str | None]:
        """``(object, etag)`` of a small JSON object, or ``(None, None)``; the etag feeds ``put_json(if_match=)``."""
        try:
            with s3_errors("get", bucket, key):
                resp = self._client.get_object(Bucket=bucket, Key=key)
                body = resp["Body"]
                try:
                    raw = bytes(body.read())
                finally:
                    body.close()
        except ObjectNotFound:
            return None, None
        return json_object(raw, bucket, key), clean_etag(resp.get("ETag"))

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
            extra["IfMatch"] = f'"{clean_etag(if_match)}"'
        try:
            with s3_errors("put", bucket, key):
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
            etag=clean_etag(resp.get("ETag")),
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
        return streaming.upload_chunks(
            self._client, self.put_bytes, bucket, key, chunks, content_type=content_type, metadata=metadata
        )

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
                while block := fh.read(streaming.PART_SIZE):
                    yield block

        ctype = content_type or content_type_for(str(path))
        return self.upload_chunks(bucket, key, read(), content_type=ctype, metadata=metadata)

    def copy(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str) -> ObjectInfo:
        """Server-side copy (objects up to 5 GiB; outputs and audio are far smaller)."""
        with s3_errors("copy", src_bucket, src_key):
            self._client.copy_object(Bucket=dst_bucket, Key=dst_key, CopySource={"Bucket": src_bucket, "Key": src_key})
        return self.head(dst_bucket, dst_key)

    def delete(self, bucket: str, key: str) -> None:
        """Delete one object; deleting a missing key is not an error (S3 semantics)."""
        with s3_errors("delete", bucket, key):
            self._client.delete_object(Bucket=bucket, Key=key)

    # --- listings -------------------------------------------------------------------------------
    def list_objects(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (recursively), page by page."""
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=bucket, Prefix=prefix)
        iterator = iter(pages)
        while True:
            with s3_errors("list", bucket, prefix):
                page = next(iterator, None)
            if page is None:
                return
            for item in page.get("Contents", []) or []:
                yield ObjectInfo(
                    bucket=bucket,
                    key=item["Key"],
                    size=int(item.get("Size", 0)),
                    etag=clean_etag(item.get("ETag")),
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
        with s3_errors("delete", bucket):
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
            with s3_errors("create_bucket", bucket):
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
            with s3_errors("head_bucket", bucket):
                self._client.head_bucket(Bucket=bucket)
        except ObjectNotFound:
            return False
        return True

    def delete_bucket(self, bucket: str) -> None:
        """Empty and delete a bucket (tests and the demo teardown); a missing bucket is fine."""
        try:
            self.delete_prefix(bucket, "")
            with s3_errors("delete_bucket", bucket):
                self._client.delete_bucket(Bucket=bucket)
        except ObjectNotFound:
            return
