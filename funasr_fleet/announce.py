"""The announcer: broker dead-letters announce themselves, and jobs published straight to AMQP get a status.

Two queues, both declared by :func:`funasr_fleet.topology.declare`:

- ``amqp.announce_queue``, bound to the dead-letter exchange beside the dead-letter queue. A message the
  BROKER dead-lettered because its delivery limit was reached (``x-death`` reason ``delivery_limit``:
  the job crashed, was OOM-killed or hung its consumer on every delivery) gets its job's status
  ``failed`` (``delivery_limit_exceeded``, with the deliveries seen) and ONE ``job.failed`` event, with an
  id derived from the dead letter itself, so a redelivered copy (announcer crash, two announcers)
  publishes the same id. Messages the consumer rejected already had their ``job.failed``: only acked.
- ``amqp.observed_queue``, bound to the jobs exchange beside the jobs queue: a copy of every published
  job. A job with no status yet is recorded ``queued`` (create-only: a late copy never rewinds a job
  that started or finished), which covers upstream services that publish without the client.

Order per message: status, then event (confirmed), then ack; any failure requeues the message. The
dead-letter queue itself is untouched (``funasr-fleet dlq list|replay`` still sees every dead letter).
Where it runs: ``funasr-fleet announce`` (one process, or a child of the supervisor); several at once
are safe.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
import structlog

from funasr_fleet import events, jobstate, topology
from funasr_fleet.errors import DeliveryLimitExceeded, FleetError
from funasr_fleet.jobs import JOB_ID_RE, decode_body, message_kind, validate_job
from funasr_fleet.jobstatus import JobState, Update
from funasr_fleet.settings import Settings

log = structlog.get_logger(__name__)

PREFETCH = 16


@dataclass(frozen=True)
class Announcement:
    """The ``job.failed`` a broker dead-letter deserves (see :func:`classify_dead_letter`)."""

    job_id: str
    event_id: str
    deliveries: int
    attempt: int
    metadata: dict[str, Any]
    input_uri: str | None
    output_prefix: str | None
    callback: str | None
    message: str


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def classify_dead_letter(
    headers: dict[str, Any] | None, body: bytes, message_id: str | None, settings: Settings
) -> Announcement | None:
    """An Announcement when the broker dead-lettered this message at its delivery limit, else None (pure)."""
    deaths = (headers or {}).get("x-death") or []
    death = next(
        (d for d in deaths if isinstance(d, dict) and _text(d.get("reason")) == "delivery_limit"
         and _text(d.get("queue")) == settings.amqp.jobs_queue),
        None,
    )  # fmt: skip
    if death is None:
        return None
    job_id, metadata, input_uri, output_prefix, callback = _job_facts(body, message_id, settings)
    try:
        deliveries = int((headers or {}).get("x-delivery-count") or 0)
    except (TypeError, ValueError):
        deliveries = 0
    deliveries = max(deliveries, settings.amqp.delivery_limit + 1)  # the limit counts returns, not deliveries
    try:
        attempt = max(1, int((headers or {}).get(topology.ATTEMPT_HEADER, 1)))
    except (TypeError, ValueError):
        attempt = 1
    when: Any = death.get("time")
    stamp = when.isoformat() if hasattr(when, "isoformat") else _text(when)
    digest = hashlib.sha256(
        "\x00".join([job_id, message_id or "", stamp, str(death.get("count", 1)), str(attempt)]).encode()
    ).hexdigest()[:24]
    message = (
        f"the broker dead-lettered the job after {deliveries} deliveries: its consumer died on each "
        "(crash, out-of-memory kill or hang)"
    )
    return Announcement(
        job_id, f"dead-{digest}", deliveries, attempt, metadata, input_uri, output_prefix, callback, message
    )


def _job_facts(
    body: bytes, message_id: str | None, settings: Settings
) -> tuple[str, dict[str, Any], str | None, str | None, str | None]:
    """Job id, metadata, input, output prefix, callback of a body; a fallback id for unreadable bodies."""
    fallback = str(message_id)[:128] if message_id else f"unparsed-{hashlib.sha256(body).hexdigest()[:24]}"
    try:
        data = decode_body(body)
    except FleetError:
        return fallback, {}, None, None, None
    raw_metadata = data.get("metadata")
    metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
    try:
        job = validate_job(data)
    except FleetError:
        raw_id = data.get("job_id")
        job_id = raw_id if isinstance(raw_id, str) and JOB_ID_RE.match(raw_id) else fallback
        return job_id, metadata, None, None, None
    fields = jobstate.job_fields(job, settings)
    return str(job.job_id), job.metadata, fields["input"], fields["output_prefix"], job.callback


class Announcer:
    """Handles one message of either queue; ``publish(exchange, key, body, props)`` must be confirmed."""

    def __init__(self, settings: Settings, storage: Any, publish: Any) -> None:
        self.settings = settings
        self.storage = storage
        self.publish = publish
        self.by = jobstate.writer_id("announcer")

    def on_dead_letter(self, props: pika.BasicProperties, body: bytes) -> str:
        """Record and announce a delivery-limit dead letter; returns what was done (for logs and tests)."""
        ann = classify_dead_letter(props.headers, body, props.message_id, self.settings)
        if ann is None:
            return "ignored"
        error = events.ErrorInfo.model_validate(
            {"code": DeliveryLimitExceeded.code, "message": ann.message, "deliveries": ann.deliveries}
        )
        update = Update(job_id=ann.job_id, state=JobState.FAILED, by=self.by, attempt=ann.attempt, error=error,
                        input=ann.input_uri, output_prefix=ann.output_prefix, callback=ann.callback)  # fmt: skip
        if self.settings.jobs.status:
            recorded = jobstate.record(self.storage, self.settings, update)
            if recorded.status.state in (JobState.SUCCEEDED, JobState.CANCELLED):
                log.info("dead letter of a job that ended otherwise; not announced", job_id=ann.job_id,
                         state=recorded.status.state.value)  # fmt: skip
                return "superseded"
        event = events.failed(ann.job_id, events.ANNOUNCER_SOURCE, code=DeliveryLimitExceeded.code, message=ann.message,
                              attempt=ann.attempt, metadata=ann.metadata, input_uri=ann.input_uri,
                              event_id=ann.event_id, deliveries=ann.deliveries)  # fmt: skip
        body_out = events.encode(event)
        headers = {events.CALLBACK_HEADER: ann.callback} if ann.callback else None
        self.publish(self.settings.amqp.events_exchange, events.routing_key("failed"), body_out,
                     _event_props(event, headers=headers))  # fmt: skip
        if props.reply_to:
            self.publish("", props.reply_to, body_out, _event_props(event, correlation_id=props.correlation_id))
        log.warning("broker dead-letter announced", job_id=ann.job_id, deliveries=ann.deliveries, event_id=ann.event_id)
        return "announced"

    def on_observed(self, props: pika.BasicProperties, body: bytes) -> str:
        """Record ``queued`` for a published job that has no status yet."""
        if not self.settings.jobs.status or (props.headers or {}).get(topology.ATTEMPT_HEADER):
            return "ignored"  # a retry copy: the job was recorded when it first ran
        try:
            data = decode_body(body)
            if message_kind(data) != "job":
                return "ignored"
            job = validate_job(data)
        except FleetError:
            return "ignored"  # the consumer fails it with its precise code
        update = Update(job_id=str(job.job_id), state=JobState.QUEUED, by=self.by, attempt=1, create_only=True,
                        **jobstate.job_fields(job, self.settings))  # fmt: skip
        return "recorded" if jobstate.record(self.storage, self.settings, update).applied else "known"


def _event_props(
    event: events.CloudEvent, *, headers: dict[str, Any] | None = None, correlation_id: str | None = None
) -> pika.BasicProperties:
    return pika.BasicProperties(content_type=events.CONTENT_TYPE, delivery_mode=2, message_id=event.id,
                                correlation_id=correlation_id, timestamp=int(time.time()), type=event.type,
                                headers=headers)  # fmt: skip


def run(settings: Settings, stop: threading.Event, *, storage: Any = None) -> None:
    """Drain both queues until ``stop`` is set, reconnecting (with backoff) when the broker or S3 fails."""
    if storage is None:
        from funasr_fleet.storage import Storage

        storage = Storage(settings.s3)
    delay = 0.5
    while not stop.is_set():
        try:
            _serve(settings, storage, stop)
            delay = 0.5
        except (pika.exceptions.AMQPError, OSError) as exc:
            log.warning("announcer lost the broker; reconnecting", error=repr(exc), retry_in_s=delay)
            stop.wait(delay)
            delay = min(delay * 2, 30.0)


def _serve(settings: Settings, storage: Any, stop: threading.Event) -> None:
    params = pika.URLParameters(settings.amqp.url.get_secret_value())
    params.heartbeat = settings.amqp.heartbeat_s
    params.socket_timeout = settings.amqp.connect_timeout_s
    params.client_properties = {"connection_name": "funasr-fleet announcer"}
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        topology.declare(ch, settings.amqp, settings.consumer)
        pub = conn.channel()
        pub.confirm_delivery()

        def publish(exchange: str, key: str, body: bytes, props: pika.BasicProperties) -> None:
            pub.basic_publish(exchange, key, body, props)

        announcer = Announcer(settings, storage, publish)
        ch.basic_qos(prefetch_count=PREFETCH)

        def handler(fn: Any) -> Any:
            def on_message(channel: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
                try:
                    outcome = fn(props, body)
                except FleetError as exc:
                    log.warning("announcer could not handle a message; requeued", error=exc.message, code=exc.code)
                    channel.basic_nack(method.delivery_tag, requeue=True)
                    stop.wait(1.0)  # S3 or the broker is failing: do not spin
                    return
                log.debug("announcer", outcome=outcome, queue=method.routing_key)
                channel.basic_ack(method.delivery_tag)

            return on_message

        ch.basic_consume(settings.amqp.announce_queue, handler(announcer.on_dead_letter))
        if settings.amqp.observed_queue:
            ch.basic_consume(settings.amqp.observed_queue, handler(announcer.on_observed))
        log.info("announcer ready", dead_letters=settings.amqp.announce_queue, observed=settings.amqp.observed_queue)
        while not stop.is_set():
            conn.process_data_events(time_limit=0.5)
    finally:
        if conn.is_open:
            conn.close()
