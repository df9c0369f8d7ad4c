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
a write that loses re-reads and re-applies its transition. :func:`advance` (pure) makes transitions
monotonic: nothing leaves ``succeeded``, a late ``running`` never overwrites a final state it should not,
and only a new submission re-opens a ``failed`` or ``cancelled`` job.

What a reader gets: the last transition any writer completed; never an older one after a newer one. A
status lags the truth by one write at most (a consumer that died between its manifest and its status
write; :func:`read` then finds the newer manifest and answers ``succeeded``).
"""

from __future__ import annotations

import os
import random
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

from funasr_fleet.events import ErrorInfo
from funasr_fleet.manifest import manifest_key
from funasr_fleet.settings import Settings

log = structlog.get_logger(__name__)

STATUS_PREFIX = "_fleet/jobs/"
CANCEL_PREFIX = "_fleet/cancel/"
STATUS_VERSION = 1
MAX_WRITE_TRIES = 10
CONFLICT_BACKOFF_S = 0.005
"""First pause after a lost conditional write; doubles, full jitter (concurrent writers spread out)."""


class JobState(StrEnum):
    UNKNOWN = "unknown"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


def status_key(job_id: str) -> str:
    """Key (results bucket) of a job's status object."""
    return f"{STATUS_PREFIX}{job_id}.json"


def cancel_marker_key(job_id: str) -> str:
    """Key (results bucket) of a job's cancel marker (see :mod:`funasr_fleet.cancel`)."""
    return f"{CANCEL_PREFIX}{job_id}.json"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def writer_id(role: str) -> str:
    """``<role>@<host>:<pid>``: who wrote a transition (for people reading the history)."""
    return f"{role}@{socket.gethostname()}:{os.getpid()}"


class Entry(BaseModel):
    """One transition in a status object's history."""

    model_config = ConfigDict(extra="allow")

    state: JobState
    at: str
    attempt: int | None = None
    stage: str | None = None
    by: str | None = None
    error_code: str | None = None


class JobStatus(BaseModel):
    """What ``funasr-fleet status`` prints and ``Client.status`` returns."""

    model_config = ConfigDict(extra="allow")

    status_version: int = STATUS_VERSION
    job_id: str
    state: JobState
    run: int = Field(1, description="Submissions that re-opened a failed or cancelled job add one.")
    attempt: int | None = None
    stage: str | None = None
    progress: float | None = None
    input: str | None = None
    output_prefix: str | None = Field(None, description="s3://bucket/prefix of the outputs.")
    manifest: str | None = None
    outputs: list[str] | None = None
    error: ErrorInfo | None = None
    callback: str | None = None
    cancel_requested_at: str | None = None
    times: dict[str, str] = Field(default_factory=dict, description="Latest time each state was entered (this run).")
    updated_at: str | None = None
    history: list[Entry] = Field(default_factory=list)
    source: str | None = Field(None, description="Where a read came from: status, manifest (reconciled) or none.")

    @property
    def final(self) -> bool:
        return self.state.final


@dataclass(frozen=True)
class Update:
    """One transition a writer wants to record; fields left None keep their stored value."""

    job_id: str
    state: JobState
    by: str
    at: str = field(default_factory=now_iso)
    attempt: int | None = None
    stage: str | None = None
    progress: float | None = None
    input: str | None = None
    output_prefix: str | None = None
    manifest: str | None = None
    outputs: list[str] | None = None
    error: ErrorInfo | None = None
    callback: str | None = None
    reopen: bool = False
    """A new submission (publisher): may re-open a failed or cancelled job as a new run."""
    create_only: bool = False
    """Only when no status exists yet (the announcer's copy of a published job may arrive late)."""
    only_from: frozenset[JobState] | None = None
    """Only when the stored state is one of these (``cancel``: only a still-queued job becomes cancelled)."""


def accepts(current: JobStatus | None, update: Update) -> bool:
    """Whether ``update`` may follow ``current`` (the monotonic-transition rule; pure)."""
    if update.only_from is not None and (current.state if current else JobState.UNKNOWN) not in update.only_from:
        return False
    if current is None or current.state is JobState.UNKNOWN:
        return True
    if update.create_only:
        return False
    new, old = update.state, current.state
    newer_attempt = (update.attempt or 0) > (current.attempt or 0)
    if old is JobState.SUCCEEDED:
        return new is JobState.SUCCEEDED  # outputs exist: nothing else is true any more
    if old is JobState.CANCELLED:
        # outputs committed before the cancel took effect are real; a new submission starts over
        return new is JobState.SUCCEEDED or (new is JobState.QUEUED and update.reopen)
    if old is JobState.FAILED:
        # a replayed or duplicate delivery really runs again; a new submission starts over
        return new in (JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED) or (
            new is JobState.QUEUED and update.reopen
        )
    if old is JobState.RUNNING:
        if new is JobState.QUEUED:
            return newer_attempt and not update.reopen  # a retry scheduled by the consumer, not a resubmission
        return True
    # old is QUEUED
    if new is JobState.QUEUED:
        return newer_attempt and not update.reopen
    return True


def advance(current: JobStatus | None, update: Update, *, history_limit: int = 32) -> JobStatus | None:
    """The status after ``update``, or None when the update is stale and must be dropped (pure)."""
    if not accepts(current, update):
        return None
    if current is None or current.state is JobState.UNKNOWN:
        base = JobStatus(job_id=update.job_id, state=update.state)
    elif current.final and update.state is JobState.QUEUED:  # re-opened: a new run, history kept
        base = current.model_copy(deep=True)
        base.run += 1
        base.times = {}
        base.stage = base.progress = base.error = base.manifest = base.outputs = None
        base.cancel_requested_at = None
    else:
        base = current.model_copy(deep=True)
    state_changed = current is None or current.state is not update.state or base.run != current.run
    base.state = update.state
    base.updated_at = update.at
    base.source = None
    for name in ("attempt", "input", "output_prefix", "manifest", "outputs", "error", "callback"):
        value = getattr(update, name)
        if value is not None:
            setattr(base, name, value)
    if update.state is JobState.RUNNING:
        base.stage, base.progress = update.stage, update.progress
    elif update.state is JobState.SUCCEEDED:
        base.stage, base.progress, base.error = None, 1.0, None
    elif update.state is JobState.QUEUED:
        base.stage, base.progress = None, None
    stage_changed = current is None or update.stage != current.stage
    if state_changed or stage_changed or update.state is not JobState.RUNNING:
        if state_changed:
            base.times[update.state.value] = update.at
        base.history.append(
            Entry(
                state=update.state,
                at=update.at,
                attempt=update.attempt,
                stage=update.stage,
                by=update.by,
                error_code=update.error.code if update.error else None,
            )
        )
        del base.history[:-history_limit]
    return base


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
