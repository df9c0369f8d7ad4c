"""Streamed transfers over a boto3 S3 client: a hashed, size-capped download and a chunked (multipart) upload.

Both clean up after themselves on any failure: a partial download file is removed, an unfinished
multipart upload is aborted (best effort; a lifecycle rule reaps what is left).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import structlog

from funasr_fleet.errors import EmptyObject, ObjectTooLarge, StorageUnavailable
from funasr_fleet.s3errors import s3_errors
from funasr_fleet.s3objects import Downloaded, ObjectInfo, clean_etag

log = structlog.get_logger(__name__)

PART_SIZE = 8 * 1024 * 1024  # multipart above this; also the part size (S3 minimum is 5 MiB)
READ_CHUNK = 1024 * 1024


def download(client: Any, info: ObjectInfo, dest: Path, *, max_bytes: int) -> Downloaded:
    """Stream the object ``info`` describes (from HEAD) to ``dest``, hashing while writing.

    Size limits are checked before (ObjectTooLarge, EmptyObject) and during; a short read raises
    StorageUnavailable; ``dest`` is removed on any failure.
    """
    bucket, key = info.bucket, info.key
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
        with s3_errors("download", bucket, key):
            resp = client.get_object(Bucket=bucket, Key=key, **extra)
        body = resp["Body"]
        try:
            with open(dest, "wb") as out:
                chunks = body.iter_chunks(READ_CHUNK)
                while True:
                    with s3_errors("download", bucket, key):
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
        etag=clean_etag(resp.get("ETag")) or info.etag,
        version_id=resp.get("VersionId") or info.version_id,
        last_modified=resp.get("LastModified") or info.last_modified,
        metadata=dict(resp.get("Metadata") or info.metadata),
    )
    log.debug("storage.downloaded", uri=got.uri, size=written)
    return Downloaded(info=got, path=dest, sha256=digest.hexdigest())


def upload_chunks(
    client: Any,
    put_bytes: Callable[..., ObjectInfo],
    bucket: str,
    key: str,
    chunks: Iterable[str | bytes],
    *,
    content_type: str,
    metadata: dict[str, str] | None = None,
) -> ObjectInfo:
    """Stream text/bytes chunks: one ``put_bytes`` when it all fits in one part, multipart otherwise."""
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
                    with s3_errors("upload", bucket, key):
                        upload_id = client.create_multipart_upload(
                            Bucket=bucket, Key=key, ContentType=content_type, Metadata=metadata or {}
                        )["UploadId"]
                part, buffer = bytes(buffer[:PART_SIZE]), buffer[PART_SIZE:]
                parts.append(_upload_part(client, bucket, key, upload_id, len(parts) + 1, part))
        if upload_id is None:
            return put_bytes(bucket, key, bytes(buffer), content_type=content_type, metadata=metadata)
        if buffer:
            parts.append(_upload_part(client, bucket, key, upload_id, len(parts) + 1, bytes(buffer)))
        with s3_errors("upload", bucket, key):
            resp = client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
    except BaseException:
        if upload_id is not None:
            _abort(client, bucket, key, upload_id)
        raise
    log.debug("storage.uploaded", uri=f"s3://{bucket}/{key}", size=total, parts=len(parts))
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=total,
        etag=clean_etag(resp.get("ETag")),
        version_id=resp.get("VersionId") or None,
        metadata=dict(metadata or {}),
    )


def _upload_part(client: Any, bucket: str, key: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
    with s3_errors("upload", bucket, key):
        resp = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)
    return {"PartNumber": number, "ETag": resp["ETag"]}


def _abort(client: Any, bucket: str, key: str, upload_id: str) -> None:
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except Exception as exc:  # noqa: BLE001 - best effort: a lifecycle rule reaps what is left
        log.warning("storage.abort_failed", uri=f"s3://{bucket}/{key}", error=type(exc).__name__)
