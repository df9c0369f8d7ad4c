"""Bucket drops → jobs: MinIO/S3 event notifications, and the reconcile sweep that catches lost ones.

All three ways in (a published job request, a bucket notification, the sweep) land on the same jobs
queue. A dropped object always becomes the same job: id ``jobs.job_id_for_object(bucket, key,
etag)``, outputs under ``<results_prefix>/<key>/`` in the results bucket, formats
``intake.formats``. So an object announced twice, or announced and swept, is one job; the
consumer answers duplicates from the job's manifest.

The sweep records what it enqueued as small marker objects ``_fleet/sweep/<job_id>.json`` in the
results bucket, created with conditional writes (If-None-Match / If-Match) so concurrent sweeps
enqueue an object once; a marker younger than ``intake.sweep_recent_s`` means "enqueued recently".
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

import structlog

from funasr_fleet.errors import FleetError, MalformedMessage, SchemaInvalid, StorageError
from funasr_fleet.jobs import JobRequest, S3Location, job_id_for_object, safe_prefix
from funasr_fleet.manifest import manifest_key
from funasr_fleet.settings import Settings
from funasr_fleet.storage import ObjectInfo, Storage, WriteConflict

log = structlog.get_logger(__name__)

SWEEP_MARKER_PREFIX = "_fleet/sweep/"
"""Key prefix (results bucket) of the sweep's "enqueued at" markers."""
MAX_SWEEP_ENQUEUES = 3
"""An object still without a manifest after this many sweep enqueues is left alone (it keeps failing)."""
CREATED_EVENT = "ObjectCreated:"

Publish = Callable[[JobRequest], Any]
"""Enqueue one job (``client.Publisher`` is one); raises BrokerUnavailable when not confirmed."""


@dataclass(frozen=True)
class Ignored:
    """A notification that yields no job, and why (the consumer acks and logs it)."""

    reason: str


# --- which objects are jobs ------------------------------------------------------------------------
def _inbox_prefix(settings: Settings) -> str:
    prefix = settings.s3.inbox_prefix.lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def skip_reason(settings: Settings, bucket: str, key: str) -> str | None:
    """Why this object is not an inbox audio drop, or None when it is one."""
    if bucket != settings.s3.inbox_bucket:
        return f"bucket {bucket!r} is not the inbox bucket"
    if not key or key.endswith("/"):
        return "directory marker"
    prefix = _inbox_prefix(settings)
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
    """``<results_prefix>/<key>``, with segments S3 allows but a prefix must not have neutralised."""
    segments = []
    for seg in key.replace("\\", "_").replace("\x00", "_").split("/"):
        if seg in ("", ".", ".."):
            seg = "_" + seg
        segments.append(seg)
    base = settings.s3.results_prefix.strip("/")
    return safe_prefix("/".join([base, *segments]) if base else "/".join(segments))


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
def _field(record: dict[str, Any], *path: str) -> Any:
    node: Any = record
    for name in path:
        if not isinstance(node, dict) or name not in node:
            raise SchemaInvalid(f"S3 event record has no {'.'.join(path)}")
        node = node[name]
    return node


def parse_notification(body: dict[str, Any], settings: Settings) -> list[JobRequest] | Ignored:
    """A MinIO/S3 event notification → the jobs it announces, or Ignored(reason).

    Only ``s3:ObjectCreated:*`` records for audio under the inbox bucket/prefix become jobs. Object
    keys arrive URL-encoded (``%2F``, ``+`` for spaces) and are decoded with unquote_plus. A body
    that is not a notification raises MalformedMessage/SchemaInvalid (the consumer dead-letters it).
    """
    if not isinstance(body, dict):
        raise MalformedMessage(f"S3 event body must be a JSON object, not {type(body).__name__}")
    records = body.get("Records")
    if records is None:
        raise SchemaInvalid("S3 event body has no Records")
    if not isinstance(records, list):
        raise SchemaInvalid("S3 event Records must be a list")
    jobs: list[JobRequest] = []
    reasons: list[str] = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise SchemaInvalid(f"S3 event record {i} is not an object")
        event_name = record.get("eventName")
        if not isinstance(event_name, str):
            raise SchemaInvalid(f"S3 event record {i} has no eventName")
        bucket = _field(record, "s3", "bucket", "name")
        raw_key = _field(record, "s3", "object", "key")
        if not isinstance(bucket, str) or not isinstance(raw_key, str):
            raise SchemaInvalid(f"S3 event record {i}: bucket name and object key must be strings")
        obj = record["s3"]["object"]
        if not event_name.removeprefix("s3:").startswith(CREATED_EVENT):
            reasons.append(f"event {event_name} is not an object creation")
            continue
        key = unquote_plus(raw_key)
        reason = skip_reason(settings, bucket, key)
        if reason is not None:
            reasons.append(f"s3://{bucket}/{key}: {reason}")
            continue
        size = obj.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise SchemaInvalid(f"S3 event record {i}: object size must be a non-negative integer")
        etag = obj.get("eTag") or obj.get("etag") or ""
        if not isinstance(etag, str):
            raise SchemaInvalid(f"S3 event record {i}: eTag must be a string")
        version_id = obj.get("versionId") if isinstance(obj.get("versionId"), str) else None
        if not etag:
            # No eTag (unusual): the version or the event's sequencer still tells versions apart.
            etag = f"v:{version_id}" if version_id else f"seq:{obj.get('sequencer', '')}"
        extra: dict[str, Any] = {"event": event_name}
        if isinstance(record.get("eventTime"), str):
            extra["event_time"] = record["eventTime"]
        try:
            jobs.append(
                job_for_object(
                    settings, bucket, key, etag, size=size, version_id=version_id, via="s3-event", extra_metadata=extra
                )
            )
        except FleetError:
            raise
        except ValueError as exc:  # pydantic ValidationError is a ValueError
            raise SchemaInvalid(f"S3 event record {i}: {exc}") from None
    if not jobs:
        return Ignored("; ".join(reasons) or "no records")
    for reason in reasons:
        log.info("s3 event record ignored", reason=reason)
    return jobs


def job_ids_for_inbox_key(settings: Settings, storage: Storage, key: str) -> list[str]:
    """The job id(s) an inbox object has (empty when it is not an audio drop); heads the object."""
    bucket = settings.s3.inbox_bucket
    if skip_reason(settings, bucket, key) is not None:
        return []
    info = storage.head(bucket, key)
    return [job_id_for_object(bucket, key, info.etag)]


# --- reconcile sweep -------------------------------------------------------------------------------
@dataclass
class SweepReport:
    """What one sweep saw and did (printed by `funasr-fleet sweep`, logged by the loop)."""

    listed: int = 0
    enqueued: int = 0
    done: int = 0
    recent: int = 0
    given_up: int = 0
    skipped: int = 0
    errors: int = 0
    job_ids: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"listed {self.listed}, enqueued {self.enqueued}, done {self.done}, recent {self.recent}, "
            f"given up {self.given_up}, skipped {self.skipped}, errors {self.errors}"
        )


def marker_key(job_id: str) -> str:
    return f"{SWEEP_MARKER_PREFIX}{job_id}.json"


def _now_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _claim(
    settings: Settings, storage: Storage, job: JobRequest, now: float
) -> tuple[str, dict[str, Any] | None]:
    """Take the right to enqueue ``job`` now: ("claimed", marker) or (why not, None)."""
    bucket, key = settings.s3.results_bucket, marker_key(str(job.job_id))
    marker: dict[str, Any] = {
        "job_id": job.job_id,
        "audio": job.audio.uri,
        "enqueued_at": _now_iso(now),
        "ts": now,
        "count": 1,
        "by": f"{socket.gethostname()}:{os.getpid()}",
    }
    try:
        existing = storage.head(bucket, key)
    except StorageError as exc:
        if exc.code != "object_not_found":
            raise
        existing = None
    if existing is None:
        try:
            storage.put_json(bucket, key, marker, if_none_match=True)
        except WriteConflict:
            return "recent", None  # another sweep just claimed it
        return "claimed", marker
    previous = storage.get_json(bucket, key) or {}
    age = now - float(previous.get("ts", 0) or 0)
    if age < settings.intake.sweep_recent_s:
        return "recent", None
    count = int(previous.get("count", 0) or 0)
    if count >= MAX_SWEEP_ENQUEUES:
        return "given_up", None
    marker["count"] = count + 1
    try:
        storage.put_json(bucket, key, marker, if_match=existing.etag)
    except WriteConflict:
        return "recent", None
    return "claimed", marker


def record_enqueued(settings: Settings, storage: Storage, job: JobRequest) -> None:
    """Note that ``job`` was enqueued by another path (e.g. a bucket event), so the sweep skips it a while."""
    now = time.time()
    marker = {
        "job_id": job.job_id,
        "audio": job.audio.uri,
        "enqueued_at": _now_iso(now),
        "ts": now,
        "count": 0,
        "by": f"{socket.gethostname()}:{os.getpid()}",
    }
    try:
        storage.put_json(settings.s3.results_bucket, marker_key(str(job.job_id)), marker)
    except StorageError as exc:  # an optimisation only
        log.warning("could not record the enqueue", job_id=job.job_id, error=exc.message)


def is_done(settings: Settings, storage: Storage, job: JobRequest) -> bool:
    """True when the job's manifest (written LAST by the consumer) exists and belongs to this job."""
    out = job.output_location(settings)
    manifest = storage.get_json(out.bucket, manifest_key(out.key))
    return manifest is not None and manifest.get("job_id") == job.job_id


def sweep(
    settings: Settings,
    storage: Storage,
    publish: Publish,
    *,
    min_age_s: float = 0.0,
    objects: Iterable[ObjectInfo] | None = None,
) -> SweepReport:
    """Enqueue a job for every inbox audio object without a result manifest and not enqueued recently.

    Safe to run repeatedly and concurrently (conditional marker writes). ``min_age_s`` leaves very
    fresh objects to their bucket event. A failed publish removes its marker so the next sweep retries.
    """
    start = time.monotonic()
    report = SweepReport()
    bucket = settings.s3.inbox_bucket
    listing = objects if objects is not None else storage.list_objects(bucket, _inbox_prefix(settings))
    for info in listing:
        report.listed += 1
        if skip_reason(settings, info.bucket, info.key) is not None:
            report.skipped += 1
            continue
        now = time.time()
        if min_age_s and info.last_modified is not None and now - info.last_modified.timestamp() < min_age_s:
            report.recent += 1
            continue
        job = job_for_object(settings, info.bucket, info.key, info.etag, size=info.size, via="sweep")
        try:
            if is_done(settings, storage, job):
                report.done += 1
                continue
            outcome, marker = _claim(settings, storage, job, now)
        except StorageError as exc:
            if not exc.permanent:
                raise
            log.warning("sweep: skipping object", key=info.key, error=exc.message, code=exc.code)
            report.errors += 1
            continue
        if outcome == "recent":
            report.recent += 1
            continue
        if outcome == "given_up":
            report.given_up += 1
            log.warning("sweep: object keeps failing; not enqueued again", key=info.key, job_id=job.job_id)
            continue
        try:
            publish(job)
        except BaseException:
            try:
                storage.delete(settings.s3.results_bucket, marker_key(str(job.job_id)))
            except StorageError:
                pass
            raise
        report.enqueued += 1
        report.job_ids.append(str(job.job_id))
        log.info("sweep: enqueued", key=info.key, job_id=job.job_id, count=(marker or {}).get("count"))
    report.duration_s = round(time.monotonic() - start, 3)
    return report
