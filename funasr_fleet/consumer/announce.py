"""Publishing a job's CloudEvents from the worker: best effort for progress, confirmed for the final one."""

from __future__ import annotations

import structlog

from funasr_fleet import envelope, events
from funasr_fleet.consumer.context import JobContext
from funasr_fleet.errors import FleetError
from funasr_fleet.settings import Settings

log = structlog.get_logger("funasr_fleet.consumer.announce")


class Announcer:
    """Events of this consumer (``source``: events.default_source) on ``amqp.events_exchange``."""

    def __init__(self, settings: Settings, source: str) -> None:
        self.settings = settings
        self.source = source

    def started(self, ctx: JobContext) -> None:
        self.emit(
            ctx,
            events.started(
                ctx.job_id, self.source, attempt=ctx.attempt, metadata=ctx.metadata, input_uri=ctx.input_uri
            ),
        )

    def progress(self, ctx: JobContext, stage: events.Stage) -> None:
        """A stage reached (``consumer.progress_events`` off: nothing is sent)."""
        self.emit(ctx, events.progress(ctx.job_id, self.source, stage, attempt=ctx.attempt, metadata=ctx.metadata))

    def retrying(self, ctx: JobContext, error: FleetError) -> None:
        """Sent whatever ``consumer.progress_events`` says: a client waits through retries with it."""
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
        """The final event, confirmed (raises BrokerUnavailable if not), and a copy to ``reply_to`` (best effort)."""
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
        ctx.bridge.publish(exchange, events.routing_key(event.kind), body, envelope.event_properties(event))
        return body
