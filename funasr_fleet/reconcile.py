"""The reconcile sweep: enqueue every inbox object that has no result and was not enqueued recently.

It catches bucket notifications that were lost. A dropped object always becomes the same job
(``intake.job_for_object``), so an object announced and swept is one job; the consumer answers
duplicates from the job's manifest.

The sweep records what it enqueued as small marker objects ``_fleet/sweep/<job_id>.json`` in the
results bucket, created with conditional writes (If-None-Match / If-Match) so concurrent sweeps
enqueue an object once; a marker younger than ``intake.sweep_recent_s`` means "enqueued recently".
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from funasr_fleet.errors import StorageError
from funasr_fleet.intake import SWEEP_MARKER_PREFIX, Publish, inbox_prefix, job_for_object, skip_reason
from funasr_fleet.jobs import JobRequest
from funasr_fleet.manifest import manifest_key, records_object
from funasr_fleet.s3objects import ObjectInfo
from funasr_fleet.settings import Settings
from funasr_fleet.storage import Storage, WriteConflict

log = structlog.get_logger(__name__)

MAX_SWEEP_ENQUEUES = 3
"""An object still without a manifest after this many sweep enqueues is left alone (it keeps failing)."""


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
    """``_fleet/sweep/<job_id>.json``: the job's marker key in the results bucket."""
    return f"{SWEEP_MARKER_PREFIX}{job_id}.json"


def _now_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _claim(settings: Settings, storage: Storage, job: JobRequest, now: float) -> tuple[str, dict[str, Any] | None]:
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


def record_enqueued(settings: Settings, storage: Storage, jobs: JobRequest | Iterable[JobRequest]) -> int:
    """Note that these jobs were just enqueued by another path (the consumer's bucket-event fan-out,
    ``submit --upload``), so the sweep counts them as "recent" for ``intake.sweep_recent_s`` instead of
    enqueueing them again. Call it AFTER the broker confirmed the publishes.

    One unconditional PUT of ``_fleet/sweep/<job_id>.json`` (results bucket) per job, ``count`` 0 (the
    sweep's own give-up count starts over). Best effort: a failed write is logged, never raised (the
    worst outcome is one duplicate enqueue by the sweep, answered from the manifest). Returns how many
    markers were written.
    """
    written = 0
    for job in [jobs] if isinstance(jobs, JobRequest) else jobs:
        now = time.time()
        marker = {
            "job_id": job.job_id,
            "audio": job.audio.uri,
            "enqueued_at": _now_iso(now),
            "ts": now,
            "count": 0,
            "by": f"{socket.gethostname()}:{os.getpid()}",
            "via": job.metadata.get("intake", "job"),
        }
        try:
            storage.put_json(settings.s3.results_bucket, marker_key(str(job.job_id)), marker)
        except StorageError as exc:  # an optimisation only
            log.warning("could not record the enqueue", job_id=job.job_id, error=exc.message)
            continue
        written += 1
    return written


def is_done(settings: Settings, storage: Storage, job: JobRequest) -> bool:
    """True when the job's output prefix holds a manifest (written LAST by the consumer) that is this
    job's, or that another job wrote for the same object bytes (same bucket, key and eTag):
    ``manifest.records_object``."""
    out = job.output_location(settings)
    manifest = storage.get_json(out.bucket, manifest_key(out.key))
    if manifest is None:
        return False
    if manifest.get("job_id") == job.job_id:
        return True
    etag = job.metadata.get("object", {}).get("etag") if isinstance(job.metadata.get("object"), dict) else None
    return records_object(manifest, job.audio.bucket, job.audio.key, etag)


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
    listing = objects if objects is not None else storage.list_objects(bucket, inbox_prefix(settings))
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
            with contextlib.suppress(StorageError):
                storage.delete(settings.s3.results_bucket, marker_key(str(job.job_id)))
            raise
        report.enqueued += 1
        report.job_ids.append(str(job.job_id))
        log.info("sweep: enqueued", key=info.key, job_id=job.job_id, count=(marker or {}).get("count"))
    report.duration_s = round(time.monotonic() - start, 3)
    return report
