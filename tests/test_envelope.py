"""AMQP properties and header filtering (funasr_fleet/envelope.py) and key joins (keys.py): pure."""

from __future__ import annotations

import pika

from funasr_fleet import envelope, events, topology
from funasr_fleet.keys import join_key

DEATH = {
    "x-death": [{"count": 1, "reason": "rejected"}],
    "x-delivery-count": 2,
    "x-first-death-reason": "rejected",
    "x-last-death-queue": "jobs",
}


def received() -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,
        message_id="job-1",
        correlation_id="c-1",
        reply_to="amq.gen-x",
        timestamp=1_700_000_000,
        app_id=envelope.CLIENT_APP_ID,
        headers={**DEATH, topology.ATTEMPT_HEADER: 2, topology.RETRY_REASON_HEADER: "timeout", "x-custom": "kept"},
    )


def test_retry_keeps_ids_drops_broker_headers_and_counts_the_attempt() -> None:
    props = envelope.retry_properties(received(), next_attempt=3, reason="storage_unavailable", expiration_ms=1500)
    assert props.headers == {
        topology.ATTEMPT_HEADER: 3,
        topology.RETRY_REASON_HEADER: "storage_unavailable",
        "x-custom": "kept",
    }
    assert (props.message_id, props.correlation_id, props.reply_to, props.timestamp) == (
        "job-1",
        "c-1",
        "amq.gen-x",
        1_700_000_000,
    )
    assert props.expiration == "1500" and props.delivery_mode == 2


def test_replay_starts_at_attempt_one_and_counts_replays() -> None:
    props = envelope.replay_properties(received())
    assert props.headers == {"x-custom": "kept", envelope.REPLAYED_HEADER: 1}
    again = envelope.replay_properties(props)
    assert again.headers[envelope.REPLAYED_HEADER] == 2
    assert props.expiration is None and props.message_id == "job-1"


def test_dead_letter_keeps_ids_and_attempts_and_says_why() -> None:
    props = envelope.dead_letter_properties(
        received(), code="object_not_found", message="get: object not found", failed_at="2026-12-01T03:00:00+00:00"
    )
    assert props.headers == {
        topology.ATTEMPT_HEADER: 2,
        topology.RETRY_REASON_HEADER: "timeout",
        topology.ERROR_CODE_HEADER: "object_not_found",
        topology.ERROR_MESSAGE_HEADER: "get: object not found",
        topology.FAILED_AT_HEADER: "2026-12-01T03:00:00+00:00",
        "x-custom": "kept",
    }  # no x-death: the broker did not dead-letter this copy
    assert (props.message_id, props.correlation_id, props.reply_to, props.timestamp, props.app_id) == (
        "job-1",
        "c-1",
        "amq.gen-x",
        1_700_000_000,
        envelope.CLIENT_APP_ID,
    )
    assert props.expiration is None and props.delivery_mode == 2 and props.content_type == "application/json"
    long = envelope.dead_letter_properties(received(), code="engine_error", message="x" * 5000, failed_at="t")
    assert len(long.headers[topology.ERROR_MESSAGE_HEADER]) == envelope.MAX_ERROR_MESSAGE_CHARS
    # a replay of it starts clean
    assert envelope.replay_properties(props).headers == {"x-custom": "kept", envelope.REPLAYED_HEADER: 1}


def test_attempt_of() -> None:
    assert envelope.attempt_of(None) == 1
    assert envelope.attempt_of({topology.ATTEMPT_HEADER: 4}) == 4
    assert envelope.attempt_of({topology.ATTEMPT_HEADER: "x"}) == 1
    assert envelope.attempt_of({topology.ATTEMPT_HEADER: 0}) == 1


def test_job_and_event_properties() -> None:
    job = envelope.job_properties("job-9", app_id=envelope.INTAKE_APP_ID, correlation_id="c")
    assert (job.message_id, job.app_id, job.correlation_id, job.delivery_mode) == (
        "job-9",
        "funasr-fleet-intake",
        "c",
        2,
    )
    assert job.content_type == "application/json" and job.timestamp > 0
    event = events.started("job-9", "/test", attempt=1, metadata={}, input_uri=None)
    props = envelope.event_properties(event, correlation_id="c")
    assert (props.message_id, props.type, props.content_type) == (event.id, event.type, events.CONTENT_TYPE)


def test_join_key() -> None:
    assert join_key("results", "job-1", "manifest.json") == "results/job-1/manifest.json"
    assert join_key("/results/", "job-1") == "results/job-1"
    assert join_key("", "manifest.json") == "manifest.json"
    assert join_key("a/b", "_cache", "k.json") == "a/b/_cache/k.json"
