"""One delivery, start to finish, on the consumer's worker thread.

parse → (bucket notification: fan out) | (job request: validate → stages.py) → settle. Every
failure ends in :meth:`Settler.fail`: permanent errors publish ``job.failed`` and dead-letter;
transient ones (and unexpected exceptions, as ``internal_error``) are re-published to a delay
queue with ``attempt + 1`` until ``consumer.retry_max_attempts`` (the decision: retries.py).
Temp files are removed whatever happens (disk use is bounded by one job).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

import structlog

from funasr_fleet import metrics
from funasr_fleet.consumer.announce import Announcer
from funasr_fleet.consumer.bridge import Bridge
from funasr_fleet.consumer.cancelling import Canceller, UploadLog
from funasr_fleet.consumer.context import JobContext, JobPlan
from funasr_fleet.consumer.control import CancelWatch
from funasr_fleet.consumer.delivery import Delivery, RunningJob
from funasr_fleet.consumer.fanout import fan_out
from funasr_fleet.consumer.retries import MessageKind
from funasr_fleet.consumer.settle import Settler
from funasr_fleet.consumer.stages import JobStages
from funasr_fleet.consumer.staging import staging_dir, staging_root, sweep_stale_staging
from funasr_fleet.consumer.status import StatusWriter
from funasr_fleet.errors import FleetError, InternalError, JobTimeout, JobWasCancelled
from funasr_fleet.jobs import JOB_ID_RE, decode_body, message_kind, validate_job
from funasr_fleet.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from funasr_fleet.consumer.loop import ConsumerLoop
    from funasr_fleet.engine.pipeline import Engine
    from funasr_fleet.storage import Storage

log = structlog.get_logger("funasr_fleet.consumer.handler")


class JobHandler:
    """The loop's runner (:meth:`__call__`) and deadline handler (:meth:`on_timeout`).

    Holds the process's one engine and storage; ``source`` is the CloudEvents source of this consumer.
    """

    def __init__(self, settings: Settings, engine: Engine, storage: Storage, source: str) -> None:
        self.settings = settings
        self.engine = engine
        status = StatusWriter(settings, storage)
        self.uploads = UploadLog(storage)  # the stages write through it: a cancel knows what to delete
        self.canceller = Canceller(settings, storage, status, self.uploads)
        self.cancels = CancelWatch(settings, storage, self.canceller)
        self.announcer = Announcer(settings, source, status, self.canceller)
        self.settler = Settler(settings, storage, self.announcer)
        self.stages = JobStages(settings, engine, cast("Storage", self.uploads), self.announcer, self.settler)
        sweep_stale_staging(staging_root(settings.consumer.tmp_dir))

    def __call__(self, running: RunningJob, bridge: Bridge) -> None:
        """Handle ``running.delivery`` to its end (worker thread); never raises."""
        start = time.monotonic()
        ctx = JobContext.for_delivery(running, bridge)
        running.context = ctx
        metrics.job_started(_queue_wait(running.delivery))
        try:
            self._handle(ctx)
        except JobWasCancelled as exc:
            self.canceller.finish(ctx, exc)
        except FleetError as exc:
            self.settler.fail(ctx, exc)
        except Exception as exc:
            log.exception("unexpected error in job", error=repr(exc))
            self.settler.fail(ctx, InternalError(f"{type(exc).__name__}: {exc}"))
        finally:
            metrics.job_finished(
                ctx.outcome, ctx.error_code, duration_s=time.monotonic() - start, rtf=ctx.rtf, audio_s=ctx.audio_s
            )

    def wire(self, loop: ConsumerLoop) -> None:
        """The loop's cancel duties: the control listener, the overdue check, the marker poller."""
        self.cancels.attach(loop)

    def on_timeout(self, running: RunningJob, bridge: Bridge) -> None:
        """Loop thread, deadline passed (the loop holds the claim): settle as a transient ``timeout``."""
        ctx = running.context if isinstance(running.context, JobContext) else JobContext.for_delivery(running, bridge)
        elapsed = time.monotonic() - running.started_at
        error = JobTimeout(f"job ran {elapsed:.0f} s, past its deadline; the consumer restarts")
        self.settler.carry_out(ctx, error, self.settler.decide(ctx, error))

    def _handle(self, ctx: JobContext) -> None:
        data = decode_body(ctx.delivery.body)
        metadata = data.get("metadata")
        ctx.metadata = metadata if isinstance(metadata, dict) else {}
        if isinstance(data.get("job_id"), str) and JOB_ID_RE.match(data["job_id"]):
            ctx.job_id = data["job_id"]
        if message_kind(data) == "s3-event":
            ctx.kind = MessageKind.S3_EVENT
            fan_out(ctx, data, self.settings, self.settler.storage)
            return
        job = validate_job(data, self.settings)
        ctx.kind = MessageKind.JOB
        ctx.job_id, ctx.metadata, ctx.input_uri = str(job.job_id), job.metadata, job.audio.uri
        plan = ctx.plan = JobPlan.build(job, self.settings, self.engine.identity.fingerprint)
        structlog.contextvars.bind_contextvars(job_id=ctx.job_id, attempt=ctx.attempt)
        ctx.running.job_id = ctx.job_id
        with staging_dir(staging_root(self.settings.consumer.tmp_dir)) as staging:
            self.stages.run(ctx, plan, staging)


def _queue_wait(delivery: Delivery) -> float | None:
    """Seconds since the job was published (its AMQP timestamp); None for retries and unstamped messages."""
    ts = delivery.properties.timestamp
    if not ts or delivery.attempt > 1:
        return None
    return max(0.0, time.time() - float(ts))
