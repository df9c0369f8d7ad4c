"""Ending one delivery: success (final event, then ack) or failure (the retry decision, carried out).

Order matters for at-least-once: the final event is confirmed by the broker before the message is
acked, and a retry copy is confirmed before the original is acked. Whoever settles first (this
worker, or the loop at a deadline or forced stop) wins :meth:`RunningJob.claim_final`; the other
side then touches nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime

import structlog

from funasr_fleet import envelope, events, topology
from funasr_fleet.consumer.announce import Announcer
from funasr_fleet.consumer.context import JobContext, Outcome
from funasr_fleet.consumer.retries import Failure, FailureDecision, RetryPolicy, Verdict, decide
from funasr_fleet.errors import FleetError, JobCancelled
from funasr_fleet.settings import Settings
from funasr_fleet.storage import Storage

log = structlog.get_logger("funasr_fleet.consumer.settle")


class Settler:
    """Success and failure of a job context, through its bridge."""

    def __init__(self, settings: Settings, storage: Storage, announcer: Announcer) -> None:
        self.settings = settings
        self.storage = storage
        self.announcer = announcer
        self.policy = RetryPolicy.from_settings(settings.amqp, settings.consumer)

    # --- success ---------------------------------------------------------------------------------
    def succeed(
        self, ctx: JobContext, data: events.EventData, *, delete_source: bool, outcome: Outcome = Outcome.SUCCEEDED
    ) -> None:
        """Publish ``job.succeeded`` with ``data`` (confirmed), delete the source if asked, ack.

        Raises JobCancelled when the loop settled the delivery first, BrokerUnavailable when the
        event is not confirmed (the failure path retries; the manifest answers the retry).
        """
        ctx.check_cancelled()
        self.announcer.final(ctx, events.succeeded(data, self.announcer.source))
        if not ctx.running.claim_final():
            raise JobCancelled("the loop settled this delivery already")
        job = ctx.job
        if delete_source and job is not None:
            try:
                self.storage.delete(job.audio.bucket, job.audio.key)
            except FleetError as exc:
                log.warning("could not delete the source object", error=exc.message)
        if not ctx.bridge.ack(ctx.delivery):
            log.warning("ack impossible (channel gone); the redelivered copy will be answered from the manifest")
        ctx.outcome, ctx.error_code = outcome, None
        log.info("job succeeded", outputs=len(data.outputs or []), reused=data.reused)

    # --- failure ---------------------------------------------------------------------------------
    def fail(self, ctx: JobContext, error: FleetError) -> None:
        """The worker's failure path: decide, claim the delivery, carry the decision out.

        Never raises: a settle the broker does not take is logged and the broker redelivers.
        """
        decision = self.decide(ctx, error, abandoned=ctx.running.cancelled.is_set() or isinstance(error, JobCancelled))
        if decision.verdict is Verdict.ABANDON:
            ctx.outcome, ctx.error_code = Outcome.ABANDONED, error.code
            log.warning("job abandoned (the loop settled it)", code=error.code)
            return
        if not ctx.running.claim_final():
            return
        try:
            self.carry_out(ctx, error, decision)
        except FleetError as exc:
            log.error("could not settle the failed job; the broker will redeliver it", error=exc.message)

    def decide(self, ctx: JobContext, error: FleetError, *, abandoned: bool = False) -> FailureDecision:
        failure = Failure(
            attempt=ctx.attempt, code=error.code, permanent=error.permanent, kind=ctx.kind, abandoned=abandoned
        )
        return decide(failure, self.policy)

    def carry_out(self, ctx: JobContext, error: FleetError, decision: FailureDecision) -> None:
        """Retry or dead-letter; the caller holds the claim. Raises FleetError when the broker refuses the settle."""
        ctx.error_code = error.code
        if decision.verdict is Verdict.RETRY:
            self._retry(ctx, error, decision)
        else:
            self._dead_letter(ctx, error)

    def _retry(self, ctx: JobContext, error: FleetError, decision: FailureDecision) -> None:
        tier, next_attempt = decision.tier, decision.next_attempt
        assert tier is not None and next_attempt is not None
        expiration = topology.jittered_expiration_ms(tier)
        props = envelope.retry_properties(
            ctx.delivery.properties, next_attempt=next_attempt, reason=error.code, expiration_ms=expiration
        )
        log.warning(
            "transient failure; retrying",
            code=error.code,
            error=error.message,
            retry_in_ms=expiration,
            next_attempt=next_attempt,
        )
        try:
            ctx.bridge.publish(
                self.settings.amqp.retry_exchange, tier.routing_key, ctx.delivery.body, props, mandatory=True
            )
        except FleetError as exc:
            log.error(
                "could not schedule the retry; requeueing", error=exc.message, decision=decision.unscheduled().reason
            )
            ctx.bridge.requeue(ctx.delivery)
            ctx.outcome = Outcome.REQUEUED
            return
        self.announcer.retrying(ctx, error)
        ctx.bridge.ack(ctx.delivery)
        ctx.outcome = Outcome.RETRIED

    def _dead_letter(self, ctx: JobContext, error: FleetError) -> None:
        log.error("job failed", code=error.code, error=error.message, permanent=error.permanent, attempts=ctx.attempt)
        try:
            self.announcer.final(ctx, self.announcer.failed(ctx, error))
        except FleetError as exc:
            log.error("failed event not confirmed; dead-lettering anyway", error=exc.message)
        self._to_dead_letter_queue(ctx, error)
        ctx.outcome = Outcome.FAILED

    def _to_dead_letter_queue(self, ctx: JobContext, error: FleetError) -> None:
        """Publish the message (body unchanged) with the error headers to the DLX, confirmed, then ack.

        A nack cannot carry headers, and without them ``dlq list`` cannot tell why a valid body
        failed at run time. Such copies carry no ``x-death``. If the copy is not confirmed, the
        message is rejected instead (the queue's DLX still keeps it, without the headers).
        """
        props = envelope.dead_letter_properties(
            ctx.delivery.properties, code=error.code, message=error.message, failed_at=datetime.now(UTC).isoformat()
        )
        amqp = self.settings.amqp
        try:
            ctx.bridge.publish(
                amqp.dead_letter_exchange, topology.DEAD_LETTER_ROUTING_KEY, ctx.delivery.body, props, mandatory=True
            )
        except FleetError as exc:
            log.error("could not publish the dead letter; rejecting it instead", error=exc.message)
            ctx.bridge.reject(ctx.delivery)  # → DLX → dead-letter queue
            return
        if not ctx.bridge.ack(ctx.delivery):
            log.warning("ack impossible after dead-lettering (channel gone); a redelivery may dead-letter a 2nd copy")
