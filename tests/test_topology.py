"""Topology against the real broker: idempotent declare, retry tiers round-trip, DLQ routing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pika
import pytest

from funasr_fleet import topology
from funasr_fleet.errors import ConfigError
from funasr_fleet.settings import AmqpSettings, ConsumerSettings, Settings


def _settings(**consumer: object) -> Settings:
    u = uuid.uuid4().hex[:10]
    return Settings(
        amqp={
            "jobs_exchange": f"t-{u}.jobs",
            "jobs_queue": f"t-{u}.jobs",
            "dead_letter_exchange": f"t-{u}.dlx",
            "dead_letter_queue": f"t-{u}.dlq",
            "retry_exchange": f"t-{u}.retry",
            "events_exchange": f"t-{u}.events",
        },
        consumer={"retry_base_delay_s": 0.3, "retry_max_attempts": 4, "retry_max_delay_s": 0.6, **consumer},
    )


@pytest.fixture
def declared() -> Iterator[tuple[Settings, pika.adapters.blocking_connection.BlockingChannel]]:
    s = _settings()
    conn = pika.BlockingConnection(pika.URLParameters(s.amqp.url.get_secret_value()))
    ch = conn.channel()
    ch.confirm_delivery()
    topology.declare(ch, s.amqp, s.consumer)
    yield s, ch
    topology.delete(ch, s.amqp, s.consumer)
    conn.close()


def _get(ch: pika.adapters.blocking_connection.BlockingChannel, queue: str, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        method, props, body = ch.basic_get(queue)
        if method is not None:
            return method, props, body
        time.sleep(0.05)
    raise AssertionError(f"nothing arrived in {queue}")


def test_backoff_doubles_and_caps() -> None:
    c = ConsumerSettings(retry_base_delay_s=2, retry_max_delay_s=10, retry_max_attempts=6)
    assert [topology.backoff_s(a, c) for a in range(1, 6)] == [2, 4, 8, 10, 10]
    tiers = topology.retry_tiers(AmqpSettings(), c)
    assert [t.delay_ms for t in tiers] == [2000, 4000, 8000, 10000]  # capped tiers share a queue
    for _ in range(50):
        exp = topology.jittered_expiration_ms(tiers[0])
        assert 1000 <= exp <= 2000


def test_priority_is_refused_on_quorum() -> None:
    with pytest.raises(ConfigError):
        topology.jobs_queue_arguments(AmqpSettings(max_priority=5))


def test_declare_is_idempotent_and_queues_are_quorum(declared) -> None:  # type: ignore[no-untyped-def]
    s, ch = declared
    topology.declare(ch, s.amqp, s.consumer)  # second time: no PRECONDITION_FAILED
    ok = ch.queue_declare(s.amqp.jobs_queue, passive=True)
    assert ok.method.message_count == 0


def test_both_routing_keys_reach_the_jobs_queue(declared) -> None:  # type: ignore[no-untyped-def]
    s, ch = declared
    for rk in (s.amqp.jobs_routing_key, s.amqp.intake_routing_key):
        ch.basic_publish(s.amqp.jobs_exchange, rk, rk.encode(), mandatory=True)
        method, _, body = _get(ch, s.amqp.jobs_queue)
        assert body == rk.encode()
        ch.basic_ack(method.delivery_tag)


def test_retry_tier_returns_to_jobs_queue_with_attempt_header(declared) -> None:  # type: ignore[no-untyped-def]
    s, ch = declared
    tier = topology.tier_for_attempt(1, s.amqp, s.consumer)
    props = pika.BasicProperties(
        delivery_mode=2, headers={topology.ATTEMPT_HEADER: 2}, expiration=str(topology.jittered_expiration_ms(tier))
    )
    ch.basic_publish(s.amqp.retry_exchange, tier.routing_key, b"{}", props, mandatory=True)
    method, props, _body = _get(ch, s.amqp.jobs_queue)
    assert props.headers[topology.ATTEMPT_HEADER] == 2
    # a rejected message lands in the DLQ
    ch.basic_nack(method.delivery_tag, requeue=False)
    method, props, _ = _get(ch, s.amqp.dead_letter_queue)
    assert props.headers["x-death"][0]["reason"] == "rejected"
    ch.basic_ack(method.delivery_tag)
