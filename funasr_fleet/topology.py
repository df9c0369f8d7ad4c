"""RabbitMQ topology: exchanges, the quorum jobs queue, its dead-letter queue, retry delay queues.

Declared idempotently by every consumer at start and by ``funasr-fleet topology declare``; all
names come from :class:`~funasr_fleet.settings.AmqpSettings`.

```
jobs exchange (direct) --jobs_routing_key-----> jobs queue (quorum, x-delivery-limit,
                       --intake_routing_key---/    DLX at-least-once, reject-publish)
                                                      | nack(requeue=False), delivery limit
                                                      v
                            dead-letter exchange (fanout) --> dead-letter queue (quorum)
retry exchange (direct) --delay.<ms>--> <retry>.delay.<ms>ms (quorum, x-message-ttl)
                                          | expires: dead-letters back to the jobs exchange
events exchange (topic): job.started / job.progress / job.succeeded / job.failed / job.cancelled
control exchange (topic): cancel.<job_id>  (each consumer binds its own exclusive queue)
dead-letter exchange --> announce queue (quorum): the announcer turns broker dead-letters into job.failed
jobs exchange --jobs_routing_key--> observed queue (quorum, max-length, drop-head): the announcer
                                    records `queued` for jobs published straight to AMQP
```

The attempt count travels in the :data:`ATTEMPT_HEADER` header (properties and header copies:
envelope.py): a transient failure re-publishes the body to the delay tier of its attempt with
``attempt + 1`` (the decision: consumer/retries.py); when the message expires it is
dead-lettered back to the jobs exchange under ``jobs_routing_key``. Delay queue names carry their
TTL, so changing the retry settings adds queues instead of clashing with existing ones.

Priority: quorum queues on RabbitMQ 3.10 reject ``x-max-priority``; the jobs queue stays quorum
(replicated, delivery limit, at-least-once dead-lettering) and ``amqp.max_priority`` must be 0.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from funasr_fleet.errors import ConfigError
from funasr_fleet.settings import AmqpSettings, ConsumerSettings

if TYPE_CHECKING:  # pragma: no cover
    from pika.adapters.blocking_connection import BlockingChannel

ATTEMPT_HEADER = "x-fleet-attempt"
"""1-based attempt number of a job message; absent on the first delivery."""
RETRY_REASON_HEADER = "x-fleet-retry-reason"
"""Error code of the failure that scheduled this retry (for people reading the queues)."""
ERROR_CODE_HEADER = "x-fleet-error-code"
"""On a dead letter: the stable error code of the failure that dead-lettered it (the consumer sets it
when it dead-letters a message itself; ``funasr-fleet dlq list`` shows it)."""
ERROR_MESSAGE_HEADER = "x-fleet-error-message"
"""On a dead letter: that failure's message (at most 1,000 characters)."""
FAILED_AT_HEADER = "x-fleet-failed-at"
"""On a dead letter the consumer published itself: when it gave up (ISO 8601, UTC; such copies have no
``x-death`` and so no broker death time)."""
DEAD_LETTER_ROUTING_KEY = "dead"

CONTROL_CANCEL_PREFIX = "cancel."


@dataclass(frozen=True, slots=True)
class RetryTier:
    """One delay queue: messages wait ``delay_ms`` (at most) and go back to the jobs exchange."""

    delay_ms: int
    queue: str
    routing_key: str


def backoff_s(attempt: int, consumer: ConsumerSettings) -> float:
    """Un-jittered delay after failed attempt ``attempt`` (1-based): base x 2^(attempt-1), capped."""
    exponent = max(0, attempt - 1)
    return min(consumer.retry_max_delay_s, consumer.retry_base_delay_s * (2.0 ** min(exponent, 60)))


def tier_for_attempt(attempt: int, amqp: AmqpSettings, consumer: ConsumerSettings) -> RetryTier:
    """The delay queue a message goes to after failed attempt ``attempt``."""
    delay_ms = max(1, round(backoff_s(attempt, consumer) * 1000))
    return RetryTier(
        delay_ms=delay_ms,
        queue=f"{amqp.retry_exchange}.delay.{delay_ms}ms",
        routing_key=f"delay.{delay_ms}",
    )


def retry_tiers(amqp: AmqpSettings, consumer: ConsumerSettings) -> list[RetryTier]:
    """Distinct delay tiers for attempts 1 .. max_attempts-1 (capped delays share one queue)."""
    tiers: dict[int, RetryTier] = {}
    for attempt in range(1, max(2, consumer.retry_max_attempts)):
        tier = tier_for_attempt(attempt, amqp, consumer)
        tiers.setdefault(tier.delay_ms, tier)
    return list(tiers.values())


def jittered_expiration_ms(tier: RetryTier, rng: random.Random | None = None) -> int:
    """Per-message TTL inside a tier: "equal jitter", uniform in [delay/2, delay].

    The queue TTL is the tier's full delay, so a message never waits longer than its tier even
    behind another message (quorum queues expire from the head).
    """
    r = (rng or random).uniform(0.5, 1.0)
    return max(1, int(tier.delay_ms * r))


def jobs_queue_arguments(amqp: AmqpSettings) -> dict[str, Any]:
    """``x-arguments`` of the jobs queue (quorum, delivery limit, DLX). ConfigError if ``amqp.max_priority``."""
    if amqp.max_priority:
        raise ConfigError(
            "amqp.max_priority must be 0: the jobs queue is a quorum queue and RabbitMQ 3.10 quorum "
            "queues do not support x-max-priority (see the README, 'The consumer')"
        )
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": amqp.delivery_limit,
        "x-dead-letter-exchange": amqp.dead_letter_exchange,
        "x-dead-letter-routing-key": DEAD_LETTER_ROUTING_KEY,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def delay_queue_arguments(tier: RetryTier, amqp: AmqpSettings) -> dict[str, Any]:
    """``x-arguments`` of one delay queue: TTL ``tier.delay_ms``, expired messages back to the jobs exchange."""
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": tier.delay_ms,
        "x-dead-letter-exchange": amqp.jobs_exchange,
        "x-dead-letter-routing-key": amqp.jobs_routing_key,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


@dataclass(frozen=True, slots=True)
class Topology:
    """What :func:`declare` made (names only), for callers and tests."""

    jobs_exchange: str
    jobs_queue: str
    dead_letter_exchange: str
    dead_letter_queue: str
    retry_exchange: str
    retry_tiers: tuple[RetryTier, ...]
    events_exchange: str
    control_exchange: str = ""
    announce_queue: str = ""
    observed_queue: str = ""


def observed_queue_arguments(amqp: AmqpSettings) -> dict[str, Any]:
    """A bounded copy of the jobs queue's input: it must never refuse a publish (drop-head, not reject-publish)."""
    return {"x-queue-type": "quorum", "x-max-length": amqp.observed_max_length, "x-overflow": "drop-head"}


def declare(channel: BlockingChannel, amqp: AmqpSettings, consumer: ConsumerSettings) -> Topology:
    """Declare everything (idempotent: same names + same arguments is a no-op for the broker)."""
    channel.exchange_declare(amqp.jobs_exchange, exchange_type="direct", durable=True)
    channel.exchange_declare(amqp.dead_letter_exchange, exchange_type="fanout", durable=True)
    channel.exchange_declare(amqp.retry_exchange, exchange_type="direct", durable=True)
    channel.exchange_declare(amqp.events_exchange, exchange_type="topic", durable=True)
    channel.exchange_declare(amqp.control_exchange, exchange_type="topic", durable=True)

    channel.queue_declare(amqp.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(amqp.dead_letter_queue, amqp.dead_letter_exchange, routing_key=DEAD_LETTER_ROUTING_KEY)

    channel.queue_declare(amqp.jobs_queue, durable=True, arguments=jobs_queue_arguments(amqp))
    channel.queue_bind(amqp.jobs_queue, amqp.jobs_exchange, routing_key=amqp.jobs_routing_key)
    if amqp.intake_routing_key != amqp.jobs_routing_key:
        channel.queue_bind(amqp.jobs_queue, amqp.jobs_exchange, routing_key=amqp.intake_routing_key)

    channel.queue_declare(amqp.announce_queue, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(amqp.announce_queue, amqp.dead_letter_exchange, routing_key=DEAD_LETTER_ROUTING_KEY)
    if amqp.observed_queue:
        channel.queue_declare(amqp.observed_queue, durable=True, arguments=observed_queue_arguments(amqp))
        channel.queue_bind(amqp.observed_queue, amqp.jobs_exchange, routing_key=amqp.jobs_routing_key)

    tiers = retry_tiers(amqp, consumer)
    for tier in tiers:
        channel.queue_declare(tier.queue, durable=True, arguments=delay_queue_arguments(tier, amqp))
        channel.queue_bind(tier.queue, amqp.retry_exchange, routing_key=tier.routing_key)

    return Topology(
        jobs_exchange=amqp.jobs_exchange,
        jobs_queue=amqp.jobs_queue,
        dead_letter_exchange=amqp.dead_letter_exchange,
        dead_letter_queue=amqp.dead_letter_queue,
        retry_exchange=amqp.retry_exchange,
        retry_tiers=tuple(tiers),
        events_exchange=amqp.events_exchange,
        control_exchange=amqp.control_exchange,
        announce_queue=amqp.announce_queue,
        observed_queue=amqp.observed_queue,
    )


def delete(channel: BlockingChannel, amqp: AmqpSettings, consumer: ConsumerSettings) -> None:
    """Remove everything :func:`declare` made (tests, benchmarks, `topology delete`).

    A missing part is skipped: the broker answers it by closing the channel, so each later entity
    gets a fresh channel on the same connection.
    """
    import pika.exceptions

    queues = [amqp.jobs_queue, amqp.dead_letter_queue, amqp.announce_queue] + [
        t.queue for t in retry_tiers(amqp, consumer)
    ]
    if amqp.observed_queue:
        queues.append(amqp.observed_queue)
    exchanges = [
        amqp.jobs_exchange,
        amqp.dead_letter_exchange,
        amqp.retry_exchange,
        amqp.events_exchange,
        amqp.control_exchange,
    ]
    for kind, name in [("queue", q) for q in queues] + [("exchange", e) for e in exchanges]:
        if not channel.is_open:
            channel = channel.connection.channel()
        try:
            if kind == "queue":
                channel.queue_delete(name)
            else:
                channel.exchange_delete(name)
        except pika.exceptions.ChannelClosedByBroker:
            continue
