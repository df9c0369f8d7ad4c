"""A job's status document and the transition rule over it (pure: no I/O).

:func:`advance` makes transitions monotonic: nothing leaves ``succeeded``, a late ``running`` never
overwrites a final state it should not, and only a new submission re-opens a ``failed`` or
``cancelled`` job. ``funasr_fleet.jobstate`` stores the documents in S3 and applies transitions with
conditional writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from funasr_fleet.events import ErrorInfo

STATUS_VERSION = 1


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


def now_iso() -> str:
    """Now, UTC, ISO 8601 with milliseconds and a ``Z`` (``2026-12-01T03:50:00.123Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
