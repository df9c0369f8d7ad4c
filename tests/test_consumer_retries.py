"""The consumer's failure decision, pure (no broker, no S3): consumer/retries.py.

The end-to-end behaviour (retry through the delay queues, dead-letter with job.failed) is tested
against the real broker in test_consumer.py; these pin every rule of the decision itself.
"""

from __future__ import annotations

import pytest

from funasr_fleet import topology
from funasr_fleet.consumer.retries import Failure, FailureDecision, MessageKind, RetryPolicy, Verdict, decide
from funasr_fleet.errors import (
    BrokerUnavailable,
    InternalError,
    JobCancelled,
    JobTimeout,
    SchemaInvalid,
    StorageUnavailable,
)
from funasr_fleet.settings import Settings


def policy(max_attempts: int = 3, **kwargs: object) -> RetryPolicy:
    s = Settings(consumer={"retry_max_attempts": max_attempts, "retry_base_delay_s": 1.0, "retry_max_delay_s": 8.0})
    base = RetryPolicy.from_settings(s.amqp, s.consumer)
    return RetryPolicy(max_attempts=base.max_attempts, tier_for=base.tier_for, **kwargs)  # type: ignore[arg-type]


def failure(attempt: int = 1, *, permanent: bool = False, kind: MessageKind = MessageKind.JOB, **kw: object) -> Failure:
    return Failure(attempt=attempt, code="storage_unavailable", permanent=permanent, kind=kind, **kw)  # type: ignore[arg-type]


def test_transient_job_failure_is_retried_at_its_attempts_tier() -> None:
    p = policy()
    first = decide(failure(1), p)
    assert first.verdict is Verdict.RETRY and first.next_attempt == 2
    assert first.tier is not None and first.tier.delay_ms == 1000 and first.tier.routing_key == "delay.1000"
    second = decide(failure(2), p)
    assert second.verdict is Verdict.RETRY and second.next_attempt == 3 and second.tier is not None
    assert second.tier.delay_ms == 2000


def test_tiers_double_and_cap() -> None:
    p = policy(max_attempts=10)
    delays = [decide(failure(a), p).tier.delay_ms for a in range(1, 10)]  # type: ignore[union-attr]
    assert delays == [1000, 2000, 4000, 8000, 8000, 8000, 8000, 8000, 8000]


def test_last_attempt_dead_letters() -> None:
    d = decide(failure(3), policy(max_attempts=3))
    assert d.verdict is Verdict.DEAD_LETTER and d.tier is None and d.next_attempt is None
    assert decide(failure(7), policy(max_attempts=3)).verdict is Verdict.DEAD_LETTER  # attempts past the limit


def test_one_attempt_means_no_retry() -> None:
    assert decide(failure(1), policy(max_attempts=1)).verdict is Verdict.DEAD_LETTER


def test_permanent_errors_dead_letter_at_once() -> None:
    assert decide(failure(1, permanent=True), policy()).verdict is Verdict.DEAD_LETTER


def test_an_unread_body_is_never_retried() -> None:
    """A body never understood (not JSON, not a valid request) dead-letters, even on a transient code."""
    assert decide(failure(1, kind=MessageKind.UNREAD), policy()).verdict is Verdict.DEAD_LETTER


def test_a_refused_fan_out_is_retried_like_a_job() -> None:
    """Issue 16: a bucket notification whose fan-out the broker refused goes through the same tiers."""
    p = policy(max_attempts=3)
    refused = Failure(attempt=1, code="broker_unavailable", permanent=False, kind=MessageKind.S3_EVENT)
    d = decide(refused, p)
    assert d.verdict is Verdict.RETRY and d.next_attempt == 2
    assert d.tier is not None and d.tier == decide(failure(1), p).tier  # the job body's tier
    lookup = Failure(attempt=2, code="storage_unavailable", permanent=False, kind=MessageKind.S3_EVENT)
    assert decide(lookup, p).verdict is Verdict.RETRY


def test_a_notification_dead_letters_when_attempts_run_out_or_it_is_invalid() -> None:
    p = policy(max_attempts=3)
    last = Failure(attempt=3, code="broker_unavailable", permanent=False, kind=MessageKind.S3_EVENT)
    assert decide(last, p).verdict is Verdict.DEAD_LETTER
    invalid = Failure(attempt=1, code="schema_invalid", permanent=True, kind=MessageKind.S3_EVENT)
    assert decide(invalid, p).verdict is Verdict.DEAD_LETTER


def test_retried_kinds_is_the_one_switch_for_notifications() -> None:
    p = policy(retried_kinds=frozenset({MessageKind.JOB}))
    assert decide(failure(1, kind=MessageKind.S3_EVENT), p).verdict is Verdict.DEAD_LETTER
    assert decide(failure(1, kind=MessageKind.JOB), p).verdict is Verdict.RETRY


def test_abandoned_job_is_left_to_the_loop() -> None:
    assert decide(failure(1, abandoned=True), policy()).verdict is Verdict.ABANDON
    assert decide(failure(3, permanent=True, abandoned=True), policy()).verdict is Verdict.ABANDON


def test_unscheduled_retry_requeues() -> None:
    d = decide(failure(1), policy())
    assert d.unscheduled() == FailureDecision(Verdict.REQUEUE, d.unscheduled().reason)
    with pytest.raises(AssertionError):
        decide(failure(1, permanent=True), policy()).unscheduled()


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (StorageUnavailable("s3 down"), True),
        (BrokerUnavailable("no confirm"), True),
        (InternalError("bug"), True),
        (JobTimeout("late"), True),
        (JobCancelled("gave up"), True),
        (SchemaInvalid("bad"), False),
    ],
)
def test_error_permanence_drives_the_decision(error: Exception, retried: bool) -> None:
    assert hasattr(error, "permanent") and hasattr(error, "code")
    f = Failure(attempt=1, code=error.code, permanent=error.permanent, kind=MessageKind.JOB)
    assert (decide(f, policy()).verdict is Verdict.RETRY) is retried


def test_policy_from_settings_uses_the_declared_tiers() -> None:
    s = Settings()
    p = RetryPolicy.from_settings(s.amqp, s.consumer)
    assert p.max_attempts == s.consumer.retry_max_attempts
    declared = {t.routing_key for t in topology.retry_tiers(s.amqp, s.consumer)}
    for attempt in range(1, p.max_attempts):
        d = decide(failure(attempt), p)
        assert d.tier is not None and d.tier.routing_key in declared
