"""Bucket drops → jobs: which objects are jobs, and MinIO/S3 event notifications.

All three ways in (a published job request, a bucket notification, the sweep) land on the same jobs
queue. A dropped object always becomes the same job: id ``jobs.job_id_for_object(bucket, key,
etag)``, outputs under ``<results_prefix>/<key>/`` in the results bucket, formats
``intake.formats``. So an object announced twice, or announced and swept, is one job; the
consumer answers duplicates from the job's manifest.

This module decides which objects are jobs and reads bucket notifications; the sweep itself (and its
"enqueued at" markers) lives in ``funasr_fleet.reconcile``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import structlog

from funasr_fleet.bucket_events import EventClass, Record, parse_records
from funasr_fleet.errors import FleetError, ObjectNotFound, SchemaInvalid
from funasr_fleet.jobs import JobRequest, job_id_for_object
from funasr_fleet.s3uri import MAX_KEY_BYTES, S3Location, safe_prefix
from funasr_fleet.settings import Settings
from funasr_fleet.storage import Storage

log = structlog.get_logger(__name__)

SWEEP_MARKER_PREFIX = "_fleet/sweep/"
"""Key prefix (results bucket) of the sweep's "enqueued at" markers (skipped as internal)."""
LONG_KEYS_DIR = "_long-keys"
"""Under the results prefix: output prefixes of keys too long to mirror (``output_prefix_for``)."""
OUTPUT_NAME_RESERVE = 64
"""Bytes kept free after an output prefix for ``/transcript.<ext>`` and ``/manifest.json``."""

Publish = Callable[[JobRequest], Any]
"""Enqueue one job (``publisher.Publisher`` is one); raises BrokerUnavailable when not confirmed."""


@dataclass(frozen=True)
class Ignored:
    """A notification that yields no job, and why (the consumer acks and logs it)."""

    reason: str


# --- which objects are jobs ------------------------------------------------------------------------
def inbox_prefix(settings: Settings) -> str:
    """The inbox prefix the sweep lists and notifications must fall under (no leading ``/``)."""
    prefix = settings.s3.inbox_prefix.lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def skip_reason(settings: Settings, bucket: str, key: str) -> str | None:
    """Why this object is not an inbox audio drop, or None when it is one."""
    if bucket != settings.s3.inbox_bucket:
        return f"bucket {bucket!r} is not the inbox bucket"
    if not key or key.endswith("/"):
        return "directory marker"
    prefix = inbox_prefix(settings)
    if prefix and not key.startswith(prefix):
        return f"key is not under the inbox prefix {prefix!r}"
    if bucket == settings.s3.results_bucket:
        internal = [SWEEP_MARKER_PREFIX]
        if settings.s3.results_prefix.strip("/"):
            internal.append(settings.s3.results_prefix.strip("/") + "/")
        if any(key.startswith(p) for p in internal):
            return "key is under the results prefix"
    suffixes = tuple(s.lower() for s in settings.intake.suffixes)
    if not key.lower().endswith(suffixes):
        return "suffix is not an audio suffix (intake.suffixes)"
    return None


def output_prefix_for(settings: Settings, key: str) -> str:
    """``<results_prefix>/<key>``, with segments S3 allows but a prefix must not have neutralised.

    A key so long that ``<prefix>/<output name>`` would pass S3's 1,024-byte key limit gets
    ``<results_prefix>/_long-keys/<sha256(key)[:32]>`` instead (deterministic, so it is still one
    prefix per key; the manifest and the events name the input key).
    """
    segments = []
    for seg in key.replace("\\", "_").replace("\x00", "_").split("/"):
        if seg in ("", ".", ".."):
            seg = "_" + seg
        segments.append(seg)
    base = settings.s3.results_prefix.strip("/")
    prefix = "/".join([base, *segments]) if base else "/".join(segments)
    if len(prefix.encode()) > MAX_KEY_BYTES - OUTPUT_NAME_RESERVE:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        prefix = f"{base}/{LONG_KEYS_DIR}/{digest}" if base else f"{LONG_KEYS_DIR}/{digest}"
    return safe_prefix(prefix)


def job_for_object(
    settings: Settings,
    bucket: str,
    key: str,
    etag: str,
    *,
    size: int | None = None,
    version_id: str | None = None,
    via: str = "s3-event",
    formats: list[str] | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> JobRequest:
    """The one job a dropped object becomes, whichever way it was noticed."""
    job_id = job_id_for_object(bucket, key, etag)
    obj: dict[str, Any] = {"etag": etag.strip('"')}
    if size is not None:
        obj["size"] = size
    if version_id:
        obj["version_id"] = version_id
    return JobRequest(
        job_id=job_id,
        audio=S3Location(bucket=bucket, key=key),
        output=S3Location(bucket=settings.s3.results_bucket, key=output_prefix_for(settings, key)),
        formats=list(formats if formats is not None else settings.intake.formats),
        metadata={"intake": via, "object": obj, **(extra_metadata or {})},
    )


# --- bucket notifications --------------------------------------------------------------------------
def drops_in(body: dict[str, Any], settings: Settings) -> tuple[list[Record], list[str]]:
    """A MinIO/S3 event notification → (its inbox audio drops, why each other record was ignored).

    Pure. A drop is a ``CONTENT`` record (``bucket_events.classify_event``) for audio under the
    inbox bucket/prefix. Metadata-only records (tags, retention, legal hold) and unknown
    ObjectCreated kinds are ignored with a reason. A body that is not a notification raises
    MalformedMessage / SchemaInvalid (``bucket_events.parse_records``; the consumer dead-letters it).
    """
    drops: list[Record] = []
    reasons: list[str] = []
    for record in parse_records(body):
        if record.event_class is EventClass.OTHER:
            reasons.append(f"event {record.event} is not an object creation")
        elif record.event_class is EventClass.METADATA:
            reasons.append(
                f"{record.uri}: event {record.event} is metadata-only (tags, retention or legal hold), not new bytes"
            )
        elif record.event_class is EventClass.UNKNOWN_CREATED:
            log.warning(
                "s3 event of an unknown ObjectCreated kind; not treated as an upload",
                event_name=record.event,
                object=record.uri,
            )
            reasons.append(
                f"{record.uri}: event {record.event} is an ObjectCreated kind this version does not know"
                " (the sweep covers real uploads)"
            )
        elif (reason := skip_reason(settings, record.bucket, record.key)) is not None:
            reasons.append(f"{record.uri}: {reason}")
        else:
            drops.append(record)
    return drops, reasons


def resolve_drop(drop: Record, storage: Storage) -> Record | Ignored:
    """A drop with its eTag: unchanged when the record had one, else looked up (HEAD) so it gets
    the SAME identity (job id) as every other announcement of these bytes; Ignored when the object
    is gone. Other StorageErrors propagate (storage_unavailable is transient: retry the notification).

    On a versioned bucket the lookup sees the latest version, i.e. the bytes the sweep would see.
    """
    if drop.etag:
        return drop
    try:
        info = storage.head(drop.bucket, drop.key)
    except ObjectNotFound:
        return Ignored(f"{drop.uri}: the record has no eTag and the object no longer exists")
    if not info.etag:
        return Ignored(f"{drop.uri}: neither the record nor S3 gives an eTag; left to the sweep")
    return replace(drop, etag=info.etag, size=info.size, version_id=info.version_id or drop.version_id)


def job_for_drop(settings: Settings, drop: Record) -> JobRequest:
    """The job of a drop that has an eTag (raises ValueError when it has none: an identity is never invented)."""
    if not drop.etag:
        raise ValueError(f"{drop.uri}: no eTag; resolve_drop first")
    extra: dict[str, Any] = {"event": drop.event}
    if drop.event_time:
        extra["event_time"] = drop.event_time
    return job_for_object(
        settings, drop.bucket, drop.key, drop.etag, size=drop.size, version_id=drop.version_id,
        via="s3-event", extra_metadata=extra,
    )  # fmt: skip


def _jobs(settings: Settings, items: list[Record | Ignored], reasons: list[str]) -> list[JobRequest] | Ignored:
    jobs: list[JobRequest] = []
    for item in items:
        if isinstance(item, Ignored):
            reasons.append(item.reason)
            continue
        try:
            jobs.append(job_for_drop(settings, item))
        except FleetError:
            raise
        except ValueError as exc:  # pydantic ValidationError is a ValueError
            raise SchemaInvalid(f"S3 event record for {item.uri}: {exc}") from None
    if not jobs:
        return Ignored("; ".join(reasons) or "no records")
    for reason in reasons:
        log.info("s3 event record ignored", reason=reason)
    return jobs


def parse_notification(body: dict[str, Any], settings: Settings) -> list[JobRequest] | Ignored:
    """A MinIO/S3 event notification → the jobs it announces, or Ignored(reason). Pure (no I/O).

    Records without an eTag are ignored here (with a reason): a job id is never invented for an
    object; ``resolve_notification`` looks such objects up instead. Errors as ``drops_in``.
    """
    drops, reasons = drops_in(body, settings)
    items: list[Record | Ignored] = [
        d if d.etag else Ignored(f"{d.uri}: the record has no eTag (resolve_notification looks it up)") for d in drops
    ]
    return _jobs(settings, items, reasons)


def resolve_notification(body: dict[str, Any], settings: Settings, storage: Storage) -> list[JobRequest] | Ignored:
    """``parse_notification``, with records that have no eTag looked up in S3 (one HEAD each):
    what the consumer's fan-out calls. Raises as ``drops_in`` and ``resolve_drop``."""
    drops, reasons = drops_in(body, settings)
    return _jobs(settings, [resolve_drop(d, storage) for d in drops], reasons)


def job_ids_for_inbox_key(settings: Settings, storage: Storage, key: str) -> list[str]:
    """The job id(s) an inbox object has (empty when it is not an audio drop); heads the object."""
    bucket = settings.s3.inbox_bucket
    if skip_reason(settings, bucket, key) is not None:
        return []
    info = storage.head(bucket, key)
    return [job_id_for_object(bucket, key, info.etag)]
