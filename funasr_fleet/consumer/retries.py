"""The failure decision, pure: what happens to a message whose handling failed.

Modelled on dramatiq's ``Retries`` middleware: a transient error is retried with exponential
backoff through the delay tiers (topology.py) until ``consumer.retry_max_attempts``; a permanent
one, or the last attempt, publishes ``job.failed`` and dead-letters. No broker, no clock, no
randomness here (the per-message jitter is applied when the retry is published), so every rule is
unit-tested without services (tests/test_consumer_retries.py).

The message kind is an explicit input: only the kinds in ``RetryPolicy.retried_kinds`` are ever
retried. Those are validated job requests and bucket notifications: a fan-out the broker refused
(``broker_unavailable``) or whose eTag lookup failed (``storage_unavailable``) is transient like a
job's failure, and the jobs it published already are idempotent (same job ids), so re-running the
whole fan-out is safe. A body that could not be read (or an invalid request) dead-letters at once:
its failure is permanent by nature, whatever the error says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial

from funasr_fleet import topology
from funasr_fleet.settings import AmqpSettings, ConsumerSettings


class MessageKind(StrEnum):
    """What a delivery turned out to be, as far as handling got before it failed."""

    UNREAD = "unread"  # not (yet) understood: unreadable body, invalid request
    JOB = "job"  # a validated job request
    S3_EVENT = "s3-event"  # a bucket notification, fanned out into job messages


class Verdict(StrEnum):
    RETRY = "retry"  # re-publish to the delay tier, attempt + 1, then ack
    DEAD_LETTER = "dead_letter"  # publish job.failed, then reject (the queue's DLX keeps it)
    REQUEUE = "requeue"  # nack with requeue: the retry could not be scheduled
    ABANDON = "abandon"  # the loop settled it already (deadline, forced stop): touch nothing


@dataclass(frozen=True)
class Failure:
    """One failed handling of a message."""

    attempt: int  # 1-based, from the message's attempt header
    code: str  # the FleetError code
    permanent: bool  # retrying cannot help (FleetError.permanent)
    kind: MessageKind
    abandoned: bool = False  # the loop gave up on the job (JobCancelled, deadline, forced stop)


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` in all (the first included); ``tier_for(attempt)``: the delay queue after that attempt."""

    max_attempts: int
    tier_for: Callable[[int], topology.RetryTier]
    retried_kinds: frozenset[MessageKind] = frozenset({MessageKind.JOB, MessageKind.S3_EVENT})

    @classmethod
    def from_settings(cls, amqp: AmqpSettings, consumer: ConsumerSettings) -> RetryPolicy:
        """``consumer.retry_max_attempts`` and the tiers of ``consumer.retry_base_delay_s``/``retry_max_delay_s``."""
        return cls(
            max_attempts=consumer.retry_max_attempts,
            tier_for=partial(topology.tier_for_attempt, amqp=amqp, consumer=consumer),
        )


@dataclass(frozen=True)
class FailureDecision:
    verdict: Verdict
    reason: str  # one line for the log
    next_attempt: int | None = None  # RETRY only
    tier: topology.RetryTier | None = None  # RETRY only

    def unscheduled(self) -> FailureDecision:
        """The decision once a RETRY could not be published: requeue (the broker redelivers it, same attempt)."""
        assert self.verdict is Verdict.RETRY, "only a retry can fail to be scheduled"
        return FailureDecision(Verdict.REQUEUE, "the retry could not be scheduled; requeued")


def decide(failure: Failure, policy: RetryPolicy) -> FailureDecision:
    """Retry at a tier, dead-letter, or abandon (see the module docstring for the rules)."""
    if failure.abandoned:
        return FailureDecision(Verdict.ABANDON, "the loop settled this delivery")
    if failure.permanent:
        return FailureDecision(Verdict.DEAD_LETTER, f"permanent error {failure.code}")
    if failure.kind not in policy.retried_kinds:
        return FailureDecision(Verdict.DEAD_LETTER, f"a {failure.kind} message is not retried")
    if failure.attempt >= policy.max_attempts:
        return FailureDecision(Verdict.DEAD_LETTER, f"attempt {failure.attempt} of {policy.max_attempts} failed")
    return FailureDecision(
        Verdict.RETRY,
        f"transient error {failure.code}",
        next_attempt=failure.attempt + 1,
        tier=policy.tier_for(failure.attempt),
    )
