"""Publishing a job's CloudEvents from the worker: best effort for progress, confirmed for the final one.

Each event is preceded by the job's status write (consumer/status.py), and ``started`` / ``progress``
are the cancel checks (consumer/cancelling.py): they raise JobWasCancelled for a cancelled job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from funasr_fleet import envelope, events
from funasr_fleet.consumer.context import JobContext
from funasr_fleet.errors import FleetError
from funasr_fleet.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from funasr_fleet.consumer.cancelling import Canceller
    from funasr_fleet.consumer.status import StatusWriter

log = structlog.get_logger("funasr_fleet.consumer.announce")


class Announcer:
    """Events of this consumer (``source``: events.default_source) on ``amqp.events_exchange``."""

    def __init__(
        self, settings: Settings, source: str, status: StatusWriter | None = None, canceller: Canceller | None = None
    ) -> None:
        self.settings = settings
        self.source = source
        self.status = status
        self.canceller = canceller

    def started(self, ctx: JobContext) -> None:
        """The job starts: status ``running``; raises JobWasCancelled for a job cancelled while queued."""
        if self.canceller is not None:
            self.canceller.at_start(ctx)
        self.emit(
            ctx,
            events.started(
                ctx.job_id, self.source, attempt=ctx.attempt, metadata=ctx.metadata, input_uri=ctx.input_uri
            ),
        )

    def progress(self, ctx: JobContext, stage: events.Stage, fraction: float | None = None) -> None:
        """A stage boundary: status, cancel check (raises JobWasCancelled), then the event
        (``consumer.progress_events`` off: nothing is sent). ``fraction``: the job's progress 0..1
        (default the stage's, ``events.STAGE_PROGRESS``)."""
        if self.canceller is not None:
            self.canceller.at_boundary(ctx, stage, fraction)
        self.emit(
            ctx,
            events.progress(
                ctx.job_id, self.source, stage, attempt=ctx.attempt, metadata=ctx.metadata, fraction=fraction
            ),
        )

    def retrying(self, ctx: JobContext, error: FleetError) -> None:
        """Sent whatever ``consumer.progress_events`` says: a client waits through retries with it."""
        if self.status is not None:
            self.status.retry_scheduled(ctx, error)
        self.emit(
            ctx,
            events.progress(
                ctx.job_id,
                self.source,
                "retrying",
                attempt=ctx.attempt,
                metadata=ctx.metadata,
                fraction=0.0,
                error=events.ErrorInfo(code=error.code, message=error.message),
            ),
        )

    def emit(self, ctx: JobContext, event: events.CloudEvent) -> None:
        """A non-final event: best effort (a lost progress event must not fail the job)."""
        if event.kind == "progress" and not self.settings.consumer.progress_events and event.data.stage != "retrying":
            return
        try:
            self._publish(ctx, event)
        except FleetError as exc:
            log.warning("event publish failed", kind=event.kind, error=exc.message)

    def final(self, ctx: JobContext, event: events.CloudEvent) -> None:
        """The final event, confirmed (raises BrokerUnavailable if not), and a copy to ``reply_to`` (best effort).

        The status is written first: ``succeeded`` strictly (raises StorageError), ``failed`` best effort.
        """
        if self.status is not None:
            self.status.final(ctx, event)
        body = self._publish(ctx, event)
        reply_to = ctx.delivery.properties.reply_to
        if reply_to:
            props = envelope.event_properties(event, correlation_id=ctx.delivery.properties.correlation_id)
            try:
                ctx.bridge.publish("", reply_to, body, props)
            except FleetError as exc:
                log.warning("reply_to publish failed", reply_to=reply_to, error=exc.message)

    def failed(self, ctx: JobContext, error: FleetError) -> events.CloudEvent:
        return events.failed(
            ctx.job_id,
            self.source,
            code=error.code,
            message=error.message,
            attempt=ctx.attempt,
            metadata=ctx.metadata,
            input_uri=ctx.input_uri,
        )

    def _publish(self, ctx: JobContext, event: events.CloudEvent) -> bytes:
        body = events.encode(event)
        exchange = self.settings.amqp.events_exchange
        props = envelope.event_properties(event)
        job = ctx.job
        if job is not None and job.callback:
            props.headers = {events.CALLBACK_HEADER: job.callback}  # for the webhook relay; never in the body
        ctx.bridge.publish(exchange, events.routing_key(event.kind), body, props)
        return body
