"""The AMQP envelope of the messages the fleet publishes: properties and the headers they carry.

Every job message (client, bucket-notification fan-out, retry, DLQ replay) and every event gets
its ``pika.BasicProperties`` here, so they agree on persistence, content type, ``message_id``
(= job id or event id) and the AMQP ``timestamp`` (seconds; the consumer's queue-wait metric).

Headers: the broker adds its own (``x-death``, ``x-delivery-count``, ...) when it dead-letters or
redelivers a message; a copy we publish must not carry them (a re-published message would look
dead already). A retry keeps the fleet's retry headers (:data:`topology.ATTEMPT_HEADER`,
:data:`topology.RETRY_REASON_HEADER`) and sets them anew; a DLQ replay drops them too, so the job
starts again at attempt 1, and counts the replay in :data:`REPLAYED_HEADER`. A dead letter the
consumer publishes itself (a nack cannot carry headers) keeps the retry headers and adds the
failure's :data:`FAILURE_HEADERS`, so ``funasr-fleet dlq list`` can show why it died.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import pika

from funasr_fleet import events
from funasr_fleet.topology import (
    ATTEMPT_HEADER,
    ERROR_CODE_HEADER,
    ERROR_MESSAGE_HEADER,
    FAILED_AT_HEADER,
    RETRY_REASON_HEADER,
)

JSON = "application/json"
PERSISTENT = 2  # AMQP delivery mode: written to disk by the broker
REPLAYED_HEADER = "x-fleet-replayed"
"""How many times ``funasr-fleet dlq replay`` re-published this job."""
CLIENT_APP_ID = "funasr-fleet-client"
INTAKE_APP_ID = "funasr-fleet-intake"
"""``app_id`` of the job messages a consumer makes from a bucket notification."""

BROKER_HEADERS = frozenset(
    {
        "x-death",
        "x-delivery-count",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)
"""Headers RabbitMQ adds on dead-lettering and quorum redelivery."""
RETRY_HEADERS = frozenset({ATTEMPT_HEADER, RETRY_REASON_HEADER})
FAILURE_HEADERS = frozenset({ERROR_CODE_HEADER, ERROR_MESSAGE_HEADER, FAILED_AT_HEADER})
"""Set on a dead letter the consumer gave up on (``dlq list`` shows them); no live copy carries them."""
MAX_ERROR_MESSAGE_CHARS = 1000
"""``x-fleet-error-message`` is cut to this many characters (headers count against the frame size)."""


def carry_headers(headers: Mapping[str, Any] | None, *, keep_retry: bool) -> dict[str, Any]:
    """A copy of a received message's headers for re-publishing: broker headers dropped, and the
    fleet's retry headers too unless ``keep_retry`` (a retry keeps them, a replay starts over)."""
    drop = BROKER_HEADERS | FAILURE_HEADERS if keep_retry else BROKER_HEADERS | FAILURE_HEADERS | RETRY_HEADERS
    return {k: v for k, v in (headers or {}).items() if k not in drop}


def attempt_of(headers: Mapping[str, Any] | None) -> int:
    """1-based attempt number from :data:`topology.ATTEMPT_HEADER` (absent or unreadable: 1).

    Crash redeliveries by the broker keep the header, so they count as the same attempt.
    """
    try:
        return max(1, int((headers or {}).get(ATTEMPT_HEADER, 1)))
    except (TypeError, ValueError):
        return 1


def job_properties(
    job_id: str, *, app_id: str, reply_to: str | None = None, correlation_id: str | None = None
) -> pika.BasicProperties:
    """A new job message: persistent JSON, ``message_id`` = job id, stamped now (seconds)."""
    return pika.BasicProperties(
        content_type=JSON,
        delivery_mode=PERSISTENT,
        message_id=job_id,
        timestamp=int(time.time()),
        reply_to=reply_to,
        correlation_id=correlation_id,
        app_id=app_id,
    )


def retry_properties(
    original: pika.BasicProperties, *, next_attempt: int, reason: str, expiration_ms: int
) -> pika.BasicProperties:
    """The copy of a failed job that waits in a delay queue: same ids and timestamp, attempt
    ``next_attempt``, the failure's error code as the reason, a per-message TTL (milliseconds)."""
    headers = carry_headers(original.headers, keep_retry=True)
    headers[ATTEMPT_HEADER] = next_attempt
    headers[RETRY_REASON_HEADER] = reason
    return _copy(original, headers, expiration=str(expiration_ms))


def replay_properties(original: pika.BasicProperties) -> pika.BasicProperties:
    """The copy of a dead letter sent back to the jobs exchange: attempt 1 again, replay counted."""
    headers = carry_headers(original.headers, keep_retry=False)
    headers[REPLAYED_HEADER] = int(headers.get(REPLAYED_HEADER, 0)) + 1
    return _copy(original, headers)


def dead_letter_properties(
    original: pika.BasicProperties, *, code: str, message: str, failed_at: str
) -> pika.BasicProperties:
    """The copy of a failed message the consumer publishes to the dead-letter exchange: same ids,
    timestamp and attempt headers, broker headers dropped, plus the failure's error ``code``,
    ``message`` (cut to :data:`MAX_ERROR_MESSAGE_CHARS`) and ``failed_at`` (ISO 8601, the caller's clock)."""
    headers = carry_headers(original.headers, keep_retry=True)
    headers[ERROR_CODE_HEADER] = code
    headers[ERROR_MESSAGE_HEADER] = message[:MAX_ERROR_MESSAGE_CHARS]
    headers[FAILED_AT_HEADER] = failed_at
    props = _copy(original, headers)
    props.app_id = original.app_id  # who sent it (client, intake) stays visible in the DLQ
    props.type = original.type
    return props


def event_properties(event: events.CloudEvent, correlation_id: str | None = None) -> pika.BasicProperties:
    """One CloudEvent: persistent, ``message_id`` = the event id, ``type`` = its CloudEvents type."""
    return pika.BasicProperties(
        content_type=events.CONTENT_TYPE,
        delivery_mode=PERSISTENT,
        message_id=event.id,
        correlation_id=correlation_id,
        timestamp=int(time.time()),
        type=event.type,
    )


def _copy(
    original: pika.BasicProperties, headers: dict[str, Any], expiration: str | None = None
) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=original.content_type or JSON,
        delivery_mode=PERSISTENT,
        message_id=original.message_id,
        correlation_id=original.correlation_id,
        reply_to=original.reply_to,
        timestamp=original.timestamp,
        headers=headers,
        expiration=expiration,
    )
