"""A bucket notification on the jobs queue becomes one job message per announced object.

The notification is acked only after every job message was confirmed by the broker; the job
messages are idempotent (a dropped object always becomes the same job id), so a notification
handled twice enqueues duplicates that the manifest answers.
"""

from __future__ import annotations

from typing import Any

import structlog

from funasr_fleet import envelope, intake
from funasr_fleet.consumer.context import JobContext, Outcome
from funasr_fleet.settings import Settings

log = structlog.get_logger("funasr_fleet.consumer.fanout")


def fan_out(ctx: JobContext, notification: dict[str, Any], settings: Settings) -> None:
    """Publish the notification's jobs (each confirmed) and ack it, or ack it as ignored.

    Raises what ``intake.parse_notification`` raises for a body that is no notification
    (MalformedMessage, SchemaInvalid) and BrokerUnavailable when a job message is not confirmed.
    """
    result = intake.parse_notification(notification, settings)
    if not isinstance(result, list):
        log.info("bucket event ignored", reason=result.reason)
        if ctx.running.claim_final():
            ctx.bridge.ack(ctx.delivery)
        ctx.outcome = Outcome.IGNORED
        return
    received = ctx.delivery.properties
    for job in result:
        props = envelope.job_properties(
            str(job.job_id),
            app_id=envelope.INTAKE_APP_ID,
            reply_to=received.reply_to,
            correlation_id=received.correlation_id,
        )
        ctx.bridge.publish(
            settings.amqp.jobs_exchange, settings.amqp.jobs_routing_key, job.to_body(), props, mandatory=True
        )
    if not ctx.running.claim_final():
        return
    ctx.bridge.ack(ctx.delivery)
    ctx.outcome = Outcome.FANNED_OUT
    log.info("bucket event turned into jobs", jobs=[j.job_id for j in result])
