"""Job status by id: one small JSON object per job, ``_fleet/jobs/<job_id>.json`` in the results bucket.

Writers (each write is one transition, applied by :func:`record` with a conditional PUT):
- publishers (``publisher.Publisher``: ``Client.submit``, ``funasr-fleet submit``, the sweep) write ``queued``
  BEFORE publishing, so a job whose ``submit`` returned reads ``queued`` (or later) at once;
- the announcer writes ``queued`` for jobs published straight to AMQP (create-only, from its copy of the
  jobs exchange's input) and ``failed`` (``delivery_limit_exceeded``) for broker dead-letters;
- consumers write ``running`` (stage, progress), ``queued`` again when a retry is scheduled, and the final
  state, always before the event that announces it;
- ``cancel`` writes ``cancelled`` for a job that is still queued.

Why S3 and not a database: the fleet has none, the manifest already lives there, and one object per job
is read by id with one GET. S3 (AWS since 2020, MinIO, SeaweedFS) gives strong read-after-write
consistency per object, and conditional writes (If-Match / If-None-Match) serialise concurrent writers:
a write that loses re-reads and re-applies its transition. ``funasr_fleet.jobstatus.advance`` (pure) makes
transitions monotonic: nothing leaves ``succeeded``, a late ``running`` never overwrites a final state it
should not, and only a new submission re-opens a ``failed`` or ``cancelled`` job. The status document
(``JobStatus``, ``JobState``, ``Update``) lives in ``funasr_fleet.jobstatus``; its types stay importable
from here, where ``Client.status`` users look for them.

What a reader gets: the last transition any writer completed; never an older one after a newer one. A
status lags the truth by one write at most (a consumer that died between its manifest and its status
write; :func:`read` then finds the newer manifest and answers ``succeeded``).
"""

from __future__ import annotations

import os
import random
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from funasr_fleet.jobstatus import JobState, JobStatus, Update, advance, now_iso
from funasr_fleet.manifest import manifest_key
from funasr_fleet.settings import Settings

# JobState, JobStatus and Update are re-exported: Client.status users import them from here
__all__ = [
    "JobState",
    "JobStatus",
    "Recorded",
    "Update",
    "cancel_marker_key",
    "default_output_prefix",
    "enqueued",
    "job_fields",
    "read",
    "record",
    "status_key",
    "try_record",
    "writer_id",
]

log = structlog.get_logger(__name__)

STATUS_PREFIX = "_fleet/jobs/"
CANCEL_PREFIX = "_fleet/cancel/"
MAX_WRITE_TRIES = 10
CONFLICT_BACKOFF_S = 0.005
"""First pause after a lost conditional write; doubles, full jitter (concurrent writers spread out)."""


def status_key(job_id: str) -> str:
    """Key (results bucket) of a job's status object."""
    return f"{STATUS_PREFIX}{job_id}.json"


def cancel_marker_key(job_id: str) -> str:
    """Key (results bucket) of a job's cancel marker (see :mod:`funasr_fleet.cancel`)."""
    return f"{CANCEL_PREFIX}{job_id}.json"


def writer_id(role: str) -> str:
    """``<role>@<host>:<pid>``: who wrote a transition (for people reading the history)."""
    return f"{role}@{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Recorded:
    """What :func:`record` left in S3: the status now stored, and whether this update is part of it."""

    status: JobStatus
    applied: bool


def record(storage: Any, settings: Settings, update: Update) -> Recorded:
    """Apply ``update`` to the stored status with a conditional PUT (re-read and re-apply on conflict).

    ``storage``: a :class:`funasr_fleet.storage.Storage`. Raises StorageError (transient or not) when S3
    fails, or StorageUnavailable after :data:`MAX_WRITE_TRIES` lost races. A stale update is not an
    error: ``Recorded.applied`` is False and ``status`` is what stands (e.g. ``cancelled``).
    """
    from funasr_fleet.errors import StorageUnavailable
    from funasr_fleet.storage import WriteConflict

    bucket, key = settings.s3.results_bucket, status_key(update.job_id)
    for tries in range(MAX_WRITE_TRIES):
        if tries:
            time.sleep(random.uniform(0, CONFLICT_BACKOFF_S * 2**tries))
        raw, etag = storage.get_json_versioned(bucket, key)
        current = _parse(raw, update.job_id)
        new = advance(current, update, history_limit=settings.jobs.status_history)
        if new is None:
            assert current is not None
            return Recorded(current, applied=False)
        body = new.model_dump(mode="json", exclude_none=True, exclude={"source"})
        try:
            if etag is None:
                storage.put_json(bucket, key, body, if_none_match=True)
            else:
                storage.put_json(bucket, key, body, if_match=etag)
        except WriteConflict:
            continue
        if current is not None and current.state is JobState.CANCELLED and new.state is JobState.QUEUED:
            storage.delete(bucket, cancel_marker_key(update.job_id))  # the new run is not cancelled
        return Recorded(new, applied=True)
    raise StorageUnavailable(f"status of {update.job_id}: {MAX_WRITE_TRIES} concurrent writers in a row")


def try_record(storage: Any, settings: Settings, update: Update) -> Recorded | None:
    """:func:`record` for writers whose job must not fail on a status write (logged; None when it failed)."""
    from funasr_fleet.errors import FleetError

    if not settings.jobs.status:
        return None
    try:
        return record(storage, settings, update)
    except FleetError as exc:
        log.warning("could not record the job status", job_id=update.job_id, state=update.state, error=exc.message)
        return None


def _parse(raw: dict[str, Any] | None, job_id: str) -> JobStatus | None:
    if raw is None:
        return None
    try:
        return JobStatus.model_validate(raw)
    except ValueError:
        log.warning("unreadable status object; starting it again", job_id=job_id)
        return None


def read(storage: Any, settings: Settings, job_id: str, *, output_prefix: str | None = None) -> JobStatus:
    """The job's status, ``unknown`` when the fleet has no trace of it.

    Reconciled with the manifest (the commit marker) at the job's output prefix: a manifest of this job
    newer than the last status write means ``succeeded``. ``output_prefix`` (``s3://bucket/prefix``) is
    where to look when no status object exists (default: ``results_prefix/<job_id>``). The cancel marker,
    when there is one and the job is not final, fills ``cancel_requested_at``. Raises StorageError.
    """
    bucket = settings.s3.results_bucket
    status = _parse(storage.get_json(bucket, status_key(job_id)), job_id)
    if status is not None:
        status.source = "status"
    if status is None or not status.final:
        prefix = (status.output_prefix if status else None) or output_prefix or default_output_prefix(settings, job_id)
        done = _from_manifest(storage, job_id, prefix, newer_than=status.updated_at if status else None)
        if done is not None:
            if status is not None:
                done.history, done.times, done.run = status.history, {**status.times, **done.times}, status.run
                done.input, done.callback = done.input or status.input, status.callback
            return done
    if status is None:
        status = JobStatus(job_id=job_id, state=JobState.UNKNOWN, source="none")
    if not status.final:
        marker = storage.get_json(bucket, cancel_marker_key(job_id))
        if marker is not None:
            status.cancel_requested_at = str(marker.get("requested_at") or "") or None
    return status


def default_output_prefix(settings: Settings, job_id: str) -> str:
    base = settings.s3.results_prefix.strip("/")
    return f"s3://{settings.s3.results_bucket}/{base + '/' if base else ''}{job_id}"


def _from_manifest(storage: Any, job_id: str, prefix_uri: str, *, newer_than: str | None) -> JobStatus | None:
    bucket, _, prefix = prefix_uri.removeprefix("s3://").partition("/")
    manifest = storage.get_json(bucket, manifest_key(prefix))
    if not manifest or manifest.get("job_id") != job_id:
        return None
    created = str(manifest.get("created") or "")
    if newer_than is not None and _when(created) < _when(newer_than):
        return None  # an older run's manifest; the status written since is the truth
    event = manifest.get("event") if isinstance(manifest.get("event"), dict) else {}
    at = created.replace("+00:00", "Z") if created else now_iso()
    return JobStatus(
        job_id=job_id,
        state=JobState.SUCCEEDED,
        progress=1.0,
        input=event.get("input"),
        output_prefix=prefix_uri,
        manifest=f"s3://{bucket}/{manifest_key(prefix)}",
        outputs=list(manifest.get("outputs") or []),
        times={JobState.SUCCEEDED.value: at},
        updated_at=at,
        source="manifest",
    )


def _when(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def job_fields(job: Any, settings: Settings) -> dict[str, Any]:
    """Update fields a :class:`funasr_fleet.jobs.JobRequest` gives: input, output prefix, callback."""
    out = job.output_location(settings)
    return {"input": job.audio.uri, "output_prefix": f"s3://{out.bucket}/{out.key}", "callback": job.callback}


def enqueued(job: Any, settings: Settings, by: str) -> Update:
    """The ``queued`` transition written just before a job message is published (attempt 1).

    ``reopen``: publishing a job id again (a resubmission, a bucket notification's fan-out retried)
    starts it over; its consumer answers from the manifest if the job had already succeeded.
    """
    return Update(
        job_id=str(job.job_id), state=JobState.QUEUED, by=by, attempt=1, reopen=True, **job_fields(job, settings)
    )
