"""Inspect and replay the dead-letter queue without losing a message.

Listing takes messages with ``basic_get`` WITHOUT acking them and closes the channel at the end:
the broker puts every one of them back. The error a dead letter shows comes, in this order, from
the ``x-fleet-error-code``/``-message`` headers (set when the consumer dead-letters a message itself),
from validating the body again exactly as the consumer does (a malformed or invalid body fails the
same way every time), or from ``x-fleet-retry-reason`` (the transient failure that scheduled the
last retry); ``error_source`` says which. Replaying publishes a copy to the jobs exchange on a
confirm-mode channel and acks the dead letter only after the broker confirmed the copy; a
replayed job starts again at attempt 1 (the retry headers and the death history are dropped).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Literal

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pydantic import BaseModel

from funasr_fleet import envelope, topology
from funasr_fleet.bucket_events import parse_records
from funasr_fleet.errors import FleetError
from funasr_fleet.intake import parse_notification
from funasr_fleet.jobs import decode_body, message_kind, validate_job
from funasr_fleet.settings import Settings


class DeadLetter(BaseModel):
    """One dead-lettered message, summarised for people and scripts."""

    job_id: str | None
    message_id: str | None
    reason: str | None  # rejected (failed job), delivery_limit (poison), expired, maxlen
    queue: str | None
    deaths: int
    attempt: int | None
    last_error: str | None  # a stable error code (funasr_fleet.errors)
    audio: str | None  # the job's input; for a bucket notification its first record's object
    size: int
    died_at: str | None
    kind: Literal["job", "s3-event", "unreadable"] = "job"
    error_message: str | None = None
    error_source: Literal["header", "body", "retry_header"] | None = None
    records: int | None = None  # bucket notifications: how many records it holds


ErrorSource = Literal["header", "body", "retry_header"]


def _error(headers: dict[str, Any], body_error: FleetError | None) -> tuple[str | None, str | None, ErrorSource | None]:
    code = _text(headers.get(topology.ERROR_CODE_HEADER))
    if code:
        return code, _text(headers.get(topology.ERROR_MESSAGE_HEADER)), "header"
    if body_error is not None:
        return body_error.code, body_error.message, "body"
    code = _text(headers.get(topology.RETRY_REASON_HEADER))
    if code:
        return code, None, "retry_header"
    return None, None, None


def _summary(props: pika.BasicProperties, body: bytes, settings: Settings | None = None) -> DeadLetter:
    headers: dict[str, Any] = dict(props.headers or {})
    deaths = headers.get("x-death") or []
    first = deaths[0] if deaths else {}
    job_id: str | None = None
    audio: str | None = None
    records: int | None = None
    kind: Literal["job", "s3-event", "unreadable"] = "unreadable"
    body_error: FleetError | None = None
    try:
        data = decode_body(body)
    except FleetError as exc:
        body_error = exc
    else:
        kind = message_kind(data)
        if kind == "s3-event":
            audio, records, body_error = _notification(data, settings)
        else:
            job_id = data.get("job_id") if isinstance(data.get("job_id"), str) else None
            a = data.get("audio")
            audio = (
                a if isinstance(a, str) else (f"s3://{a.get('bucket')}/{a.get('key')}" if isinstance(a, dict) else None)
            )
            try:
                validate_job(data, settings)
            except FleetError as exc:
                body_error = exc
    last_error, error_message, error_source = _error(headers, body_error)
    died = first.get("time") or _text(headers.get(topology.FAILED_AT_HEADER))  # consumer dead letters: no x-death
    return DeadLetter(
        job_id=job_id or props.message_id,
        message_id=props.message_id,
        # a message the consumer dead-lettered itself (with the error headers) has no x-death
        reason=_text(first.get("reason")) or ("rejected" if error_source == "header" else None),
        queue=_text(first.get("queue")),
        deaths=int(sum(int(d.get("count", 1)) for d in deaths)) if deaths else 0,
        attempt=int(headers[topology.ATTEMPT_HEADER]) if topology.ATTEMPT_HEADER in headers else None,
        last_error=last_error,
        audio=audio,
        size=len(body),
        died_at=died.isoformat() if isinstance(died, datetime) else (str(died) if died else None),
        kind=kind,
        error_message=error_message,
        error_source=error_source,
        records=records,
    )


def _notification(data: dict[str, Any], settings: Settings | None) -> tuple[str | None, int | None, FleetError | None]:
    """A dead-lettered bucket notification → (its first record's object, how many records, the
    error parsing it raises again, if any)."""
    try:
        records = parse_records(data)
    except FleetError as exc:
        raw = data.get("Records")
        return None, len(raw) if isinstance(raw, list) else None, exc
    audio = records[0].uri if records else None
    if settings is not None:
        try:
            parse_notification(data, settings)
        except FleetError as exc:
            return audio, len(records), exc
    return audio, len(records), None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


@contextmanager
def _channel(settings: Settings) -> Iterator[BlockingChannel]:
    params = pika.URLParameters(settings.amqp.url.get_secret_value())
    params.socket_timeout = settings.amqp.connect_timeout_s
    params.connection_attempts = 1
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        yield ch
    finally:
        if conn.is_open:
            conn.close()  # unacked gets go back to the queue


def _matches(summary: DeadLetter, job_id: str | None) -> bool:
    return job_id is None or summary.job_id == job_id or summary.message_id == job_id


def _walk(ch: BlockingChannel, queue: str) -> Iterator[tuple[int, pika.BasicProperties, bytes]]:
    """Every message present now, each once (held unacked so basic_get moves on)."""
    total = int(ch.queue_declare(queue, passive=True).method.message_count)
    for _ in range(total):
        method, props, body = ch.basic_get(queue, auto_ack=False)
        if method is None:
            return
        yield method.delivery_tag, props, body


def list_dead(settings: Settings, *, limit: int | None = None, job_id: str | None = None) -> list[DeadLetter]:
    """Dead letters (oldest first), filtered by job id; the queue is left exactly as it was."""
    out: list[DeadLetter] = []
    with _channel(settings) as ch:
        last = 0
        for tag, props, body in _walk(ch, settings.amqp.dead_letter_queue):
            last = tag
            summary = _summary(props, body, settings)
            if _matches(summary, job_id):
                out.append(summary)
                if limit is not None and len(out) >= limit:
                    break
        _give_back(ch, last)
    return out


def _give_back(ch: BlockingChannel, last_tag: int) -> None:
    """Return every message still held (explicit, so it does not wait for the channel close)."""
    if last_tag:
        ch.basic_nack(delivery_tag=last_tag, multiple=True, requeue=True)


def replay(settings: Settings, *, limit: int | None = None, job_id: str | None = None) -> list[DeadLetter]:
    """Re-publish matching dead letters as fresh jobs; each is acked only after its copy is confirmed."""
    done: list[DeadLetter] = []
    amqp = settings.amqp
    with _channel(settings) as ch:
        for tag, props, body in _walk(ch, amqp.dead_letter_queue):
            summary = _summary(props, body, settings)
            if not _matches(summary, job_id):
                continue
            copy = envelope.replay_properties(props)
            ch.basic_publish(
                amqp.jobs_exchange, amqp.jobs_routing_key, body, copy, mandatory=True
            )  # raises unless confirmed
            ch.basic_ack(tag)
            done.append(summary)
            if limit is not None and len(done) >= limit:
                break
        # non-matching messages held by _walk go back when the channel closes
    return done
