"""The consumer's status writes (``_fleet/jobs/<job_id>.json``, see :mod:`funasr_fleet.jobstate`).

Each write comes BEFORE the event that announces the same thing (the consumer's Announcer calls
these first), so a client that received an event reads a status at least that new:

- job start: ``running`` (attempt, input, output prefix, callback);
- each stage: ``running`` with the stage and its progress (events.STAGE_PROGRESS);
- a retry scheduled: ``queued`` with ``attempt + 1`` and the retry's reason;
- the final event: ``succeeded`` (manifest, outputs; strict: a failed write fails the settle, and the
  redelivery is answered from the manifest, which writes it again) or ``failed`` (code, message);
- a cancel carried out: ``cancelled`` (consumer/cancelling.py).

Only validated jobs get writes (a body that is no job request has no trustworthy id). Non-final
writes never fail a job: a status write that fails is logged and the job goes on.
"""

from __future__ import annotations

from typing import Any

from funasr_fleet import events, jobstate
from funasr_fleet.consumer.context import JobContext
from funasr_fleet.errors import FleetError
from funasr_fleet.jobstate import Recorded
from funasr_fleet.jobstatus import JobState, Update
from funasr_fleet.settings import Settings


class StatusWriter:
    """Writes one job's transitions; ``storage`` is a :class:`funasr_fleet.storage.Storage`."""

    def __init__(self, settings: Settings, storage: Any) -> None:
        self.settings = settings
        self.storage = storage
        self.by = jobstate.writer_id("consumer")

    def enabled_for(self, ctx: JobContext) -> bool:
        return self.settings.jobs.status and ctx.plan is not None

    def running(self, ctx: JobContext, stage: str | None = None, progress: float | None = None) -> Recorded | None:
        """``running`` (at ``stage``; ``progress`` 0..1, default the stage's); None when not written
        (off, not a job, or S3 failed: logged)."""
        if not self.enabled_for(ctx):
            return None
        if progress is None:
            progress = events.STAGE_PROGRESS.get(stage, 0.0) if stage else 0.0
        return jobstate.try_record(self.storage, self.settings, self._update(ctx, JobState.RUNNING, stage=stage,
                                                                             progress=progress))  # fmt: skip

    def retry_scheduled(self, ctx: JobContext, error: FleetError) -> None:
        if self.enabled_for(ctx):
            info = events.ErrorInfo(code=error.code, message=error.message)
            update = self._update(ctx, JobState.QUEUED, attempt=ctx.attempt + 1, error=info)
            jobstate.try_record(self.storage, self.settings, update)

    def final(self, ctx: JobContext, event: events.CloudEvent) -> None:
        """Before a final event: ``succeeded`` (strict: raises StorageError) or ``failed`` (best effort)."""
        if not self.enabled_for(ctx):
            return
        data = event.data
        if event.kind == "succeeded":
            update = self._update(ctx, JobState.SUCCEEDED, manifest=data.manifest, outputs=data.outputs)
            jobstate.record(self.storage, self.settings, update)
        elif event.kind == "failed":
            jobstate.try_record(self.storage, self.settings, self._update(ctx, JobState.FAILED, error=data.error))

    def cancelled(self, ctx: JobContext, reason: str) -> Recorded | None:
        """``cancelled`` (strict: raises StorageError); None when status is off. ``applied`` False: the job
        ended otherwise meanwhile (e.g. a duplicate delivery committed it)."""
        if not self.enabled_for(ctx):
            return None
        error = events.ErrorInfo(code="job_cancelled", message=reason)
        return jobstate.record(self.storage, self.settings, self._update(ctx, JobState.CANCELLED, error=error))

    def _update(self, ctx: JobContext, state: JobState, **fields: Any) -> Update:
        fields.setdefault("attempt", ctx.attempt)
        if ctx.job is not None:
            for name, value in jobstate.job_fields(ctx.job, self.settings).items():
                fields.setdefault(name, value)
        return Update(job_id=ctx.job_id, state=state, by=self.by, **fields)
