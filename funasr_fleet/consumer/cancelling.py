"""Cancelling a job on the consumer: at its start, at every stage boundary, and after a grace period.

``funasr-fleet cancel`` leaves a marker (``_fleet/cancel/<job_id>.json``) and broadcasts
``cancel.<job_id>`` (funasr_fleet.cancel). Here:

- :meth:`Canceller.at_start` (before ``job.started``): records ``running``; a job whose status is
  ``cancelled`` (it was cancelled while queued) or that has a marker never starts;
- :meth:`Canceller.at_boundary` (each stage, before its progress event): stops the job when the
  broadcast or the marker poller (consumer/control.py) flagged it, or when the marker exists;
- both raise :class:`~funasr_fleet.errors.JobWasCancelled`; the handler then calls :meth:`finish`;
- inside a model call the worker cannot be stopped: after ``jobs.cancel_grace_s`` the loop claims the
  delivery, calls :meth:`carry_out` on its own thread and exits ``exitcodes.JOB_CANCELLED``.

Carrying out a cancel (whoever holds the claim): no more writes by this attempt (:class:`UploadLog`),
status ``cancelled``, delete what THIS attempt uploaded (never the source, never a manifest), publish
``job.cancelled`` (the cancel command's event id: receivers see one event), ack. A job that ended
otherwise meanwhile (its manifest was written) is not cancelled: its delivery is requeued and the
redelivery is answered from the manifest.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pika
import structlog

from funasr_fleet import cancel
from funasr_fleet.consumer.context import JobContext, Outcome
from funasr_fleet.consumer.status import StatusWriter
from funasr_fleet.errors import FleetError, JobCancelled, JobWasCancelled
from funasr_fleet.jobstatus import JobState, JobStatus
from funasr_fleet.manifest import MANIFEST_NAME, manifest_key
from funasr_fleet.settings import Settings

log = structlog.get_logger("funasr_fleet.consumer.cancelling")

IN_FLIGHT_WAIT_S = 5.0
"""How long a cancel waits for an upload already under way before deleting what was uploaded."""


class UploadLog:
    """The job stages' storage (a :class:`funasr_fleet.storage.Storage` proxy): records what this
    attempt writes, and refuses further writes once a cancel closed it (raises JobCancelled)."""

    _WRITES = ("upload_chunks", "put_bytes", "put_json")

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self._cond = threading.Condition()
        self._keys: list[tuple[str, str]] = []
        self._in_flight = 0
        self._closed = False
        self.manifest_written = False

    def __getattr__(self, name: str) -> Any:
        if name in self._WRITES:
            return lambda bucket, key, *args, **kwargs: self._write(name, bucket, key, *args, **kwargs)
        return getattr(self._storage, name)

    def reset(self) -> None:
        """A new job starts (worker thread)."""
        with self._cond:
            self._keys, self._closed, self.manifest_written = [], False, False

    def _write(self, method: str, bucket: str, key: str, *args: Any, **kwargs: Any) -> Any:
        with self._cond:
            if self._closed:
                raise JobCancelled("the job was cancelled: no further outputs are written")
            self._in_flight += 1
            self._keys.append((bucket, key))
        try:
            result = getattr(self._storage, method)(bucket, key, *args, **kwargs)
            if key.endswith(MANIFEST_NAME):
                self.manifest_written = True
            return result
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def close(self, wait_s: float = IN_FLIGHT_WAIT_S) -> list[tuple[str, str]]:
        """No more writes; waits up to ``wait_s`` for one under way. Returns the outputs written (no manifest)."""
        with self._cond:
            self._closed = True
            self._cond.wait_for(lambda: self._in_flight == 0, timeout=wait_s)
            return [(b, k) for b, k in self._keys if not k.endswith(MANIFEST_NAME)]


class Canceller:
    """Cancel checks and the cancel itself; ``storage`` is the real Storage (status, marker, deletes)."""

    def __init__(self, settings: Settings, storage: Any, status: StatusWriter, uploads: UploadLog) -> None:
        self.settings = settings
        self.storage = storage
        self.status = status
        self.uploads = uploads

    # --- checks (worker thread) ------------------------------------------------------------------
    def at_start(self, ctx: JobContext) -> None:
        """Record ``running``; raise JobWasCancelled when the job was cancelled before it started."""
        self.uploads.reset()
        recorded = self.status.running(ctx)
        state = recorded.status.state if recorded is not None else None
        if state is JobState.SUCCEEDED:
            return  # committed before any cancel took effect: the manifest answers this delivery
        if state is JobState.CANCELLED:
            raise JobWasCancelled("the job was cancelled while queued; not started")
        marker = cancel.read_marker(self.storage, self.settings, ctx.job_id)
        if marker is not None and not self._committed(ctx):  # after a commit (its status write lost) it is moot
            self._stop(ctx, marker, "before it started")

    def at_boundary(self, ctx: JobContext, stage: str, progress: float | None = None) -> None:
        """A stage boundary: record ``running`` at ``stage`` (``progress`` 0..1, default the stage's),
        then stop if the job was cancelled."""
        self.status.running(ctx, stage, progress)
        if ctx.running.cancel_requested.is_set():
            raise JobWasCancelled(f"cancelled; stopped at the {stage} stage boundary")
        self._check_marker(ctx, stage)

    def _committed(self, ctx: JobContext) -> bool:
        """A manifest of this job exists at its output prefix (the manifest then answers the delivery)."""
        if ctx.plan is None:
            return False
        out = ctx.plan.output
        manifest = self.storage.get_json(out.bucket, manifest_key(out.key))
        return bool(manifest) and manifest.get("job_id") == ctx.job_id

    def _check_marker(self, ctx: JobContext, stage: str) -> None:
        marker = cancel.read_marker(self.storage, self.settings, ctx.job_id)
        if marker is not None:
            self._stop(ctx, marker, f"at the {stage} stage boundary")

    def _stop(self, ctx: JobContext, marker: dict[str, Any], where: str) -> None:
        ctx.running.request_cancel(str(marker.get("id") or "none"), time.monotonic())
        raise JobWasCancelled(f"cancelled; stopped {where}")

    # --- the cancel --------------------------------------------------------------------------------
    def finish(self, ctx: JobContext, reason: JobWasCancelled) -> None:
        """Worker thread, after a check raised: claim the delivery and carry the cancel out (never raises)."""
        if not ctx.running.claim_final():
            ctx.outcome = Outcome.ABANDONED  # the loop settled it first
            return
        try:
            self.carry_out(ctx, reason.message)
        except FleetError as exc:
            log.error("could not carry out the cancel; requeued (the next delivery is dropped)", error=exc.message)
            ctx.bridge.requeue(ctx.delivery)
            ctx.outcome = Outcome.REQUEUED

    def carry_out(self, ctx: JobContext, reason: str) -> bool:
        """The caller holds the claim. True: cancelled and acked; False: the job had ended otherwise
        (requeued). Raises StorageError / BrokerUnavailable (the caller requeues or exits)."""
        written = self.uploads.close()
        if self.uploads.manifest_written:
            log.info("cancel came too late: the job committed its outputs; requeued to be answered")
            ctx.bridge.requeue(ctx.delivery)
            ctx.outcome = Outcome.REQUEUED
            return False
        recorded = self.status.cancelled(ctx, reason)
        if recorded is not None and not recorded.applied and recorded.status.state is not JobState.CANCELLED:
            log.info("job ended otherwise before the cancel took effect", state=recorded.status.state.value)
            ctx.bridge.requeue(ctx.delivery)
            ctx.outcome = Outcome.REQUEUED
            return False
        for bucket, key in written:
            self.storage.delete(bucket, key)
        status = recorded.status if recorded is not None else self._bare_status(ctx)
        marker_id = ctx.running.cancel_marker_id or self._marker_id(ctx)
        props = ctx.delivery.properties

        def publish(exchange: str, key: str, body: bytes, properties: pika.BasicProperties) -> None:
            ctx.bridge.publish(exchange, key, body, properties)

        cancel.publish_cancelled(self.settings, publish, status, {"id": marker_id}, reply_to=props.reply_to,
                                 correlation_id=props.correlation_id)  # fmt: skip
        if not ctx.bridge.ack(ctx.delivery):
            log.warning("ack impossible (channel gone); the redelivered copy is dropped at its start")
        ctx.outcome, ctx.error_code = Outcome.CANCELLED, JobWasCancelled.code
        log.warning("job cancelled", reason=reason, deleted_outputs=len(written))
        return True

    def _marker_id(self, ctx: JobContext) -> str:
        marker = cancel.read_marker(self.storage, self.settings, ctx.job_id)
        return str(marker.get("id") or "none") if marker else "none"

    def _bare_status(self, ctx: JobContext) -> JobStatus:
        job = ctx.job
        return JobStatus(job_id=ctx.job_id, state=JobState.CANCELLED, attempt=ctx.attempt, input=ctx.input_uri,
                         callback=job.callback if job is not None else None)  # fmt: skip
