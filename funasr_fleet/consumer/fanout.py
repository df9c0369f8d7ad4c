"""A bucket notification on the jobs queue becomes one job message per announced object.

The notification is acked only after every job message was confirmed by the broker; the job
messages are idempotent (a dropped object always becomes the same job id), so a notification
handled twice enqueues duplicates that the manifest answers. That is also why a fan-out that
fails half-way (the broker refuses a publish: ``broker_unavailable``; an eTag lookup fails:
``storage_unavailable``) is simply retried as a whole through the delay tiers (retries.py).

Records without an eTag are looked up (HEAD) so they get the object's one identity; after the
confirms each job is recorded for the reconcile sweep (``reconcile.record_enqueued``, best effort)
so the sweep does not enqueue a fresh upload a second time within ``intake.sweep_recent_s``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from funasr_fleet import envelope, intake, jobstate, reconcile
from funasr_fleet.consumer.context import JobContext, Outcome
from funasr_fleet.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from funasr_fleet.storage import Storage

log = structlog.get_logger("funasr_fleet.consumer.fanout")


def fan_out(ctx: JobContext, notification: dict[str, Any], settings: Settings, storage: Storage) -> None:
    """Publish the notification's jobs (each confirmed), record them for the sweep and ack it;
    or ack it as ignored.

    Raises what ``intake.resolve_notification`` raises: MalformedMessage / SchemaInvalid for a body
    that is no notification (permanent), StorageUnavailable when an eTag lookup fails; and
    BrokerUnavailable when a job message is not confirmed (both transient: retried).
    """
    result = intake.resolve_notification(notification, settings, storage)
    if not isinstance(result, list):
        log.info("bucket event ignored", reason=result.reason)
        if ctx.running.claim_final():
            ctx.bridge.ack(ctx.delivery)
        ctx.outcome = Outcome.IGNORED
        return
    received = ctx.delivery.properties
    by = jobstate.writer_id("intake")
    for job in result:
        if settings.jobs.status:  # a dropped file's job reads queued, not unknown, until a consumer takes it
            jobstate.try_record(storage, settings, jobstate.enqueued(job, settings, by))
        props = envelope.job_properties(
            str(job.job_id),
            app_id=envelope.INTAKE_APP_ID,
            reply_to=received.reply_to,
            correlation_id=received.correlation_id,
        )
        ctx.bridge.publish(
            settings.amqp.jobs_exchange, settings.amqp.jobs_routing_key, job.to_body(), props, mandatory=True
        )
    reconcile.record_enqueued(settings, storage, result)  # never raises; a lost marker costs one duplicate
    if not ctx.running.claim_final():
        return
    ctx.bridge.ack(ctx.delivery)
    ctx.outcome = Outcome.FANNED_OUT
    log.info("bucket event turned into jobs", jobs=[j.job_id for j in result])
