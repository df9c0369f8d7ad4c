"""One delivery being handled: the job context every stage, event and settle reads and writes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from funasr_fleet.consumer.bridge import Bridge
from funasr_fleet.consumer.delivery import Delivery, RunningJob
from funasr_fleet.consumer.retries import MessageKind
from funasr_fleet.errors import JobCancelled
from funasr_fleet.jobs import JobRequest
from funasr_fleet.manifest import options_hash
from funasr_fleet.s3uri import S3Location
from funasr_fleet.settings import Settings


class Outcome(StrEnum):
    """How one attempt ended; the ``status`` label of ``fleet_jobs_total``."""

    SUCCEEDED = "succeeded"  # transcribed (or reused by content), committed, acked
    DUPLICATE = "duplicate"  # answered from the job's manifest (a redelivery of a finished job)
    FAILED = "failed"  # job.failed published, dead-lettered
    RETRIED = "retried"  # re-published to a delay tier with attempt + 1
    REQUEUED = "requeued"  # the retry could not be scheduled: nack-requeued
    ABANDONED = "abandoned"  # the loop settled it (deadline, forced stop)
    CANCELLED = "cancelled"  # cancelled (funasr-fleet cancel): job.cancelled published, acked
    IGNORED = "ignored"  # a bucket notification that announces no job
    FANNED_OUT = "fanned_out"  # a bucket notification turned into job messages


@dataclass(frozen=True)
class JobPlan:
    """What a validated job resolves to under these settings and this engine."""

    job: JobRequest
    output: S3Location  # bucket + prefix of the outputs and the manifest
    formats: list[str]
    options: dict[str, Any]  # the job's options as JSON (hashed into the manifest and the reuse key)
    options_hash: str
    fingerprint: str  # the engine's identity
    delete_source: bool

    @classmethod
    def build(cls, job: JobRequest, settings: Settings, fingerprint: str) -> JobPlan:
        formats = job.effective_formats(settings)
        options = job.options.model_dump(mode="json")
        return cls(
            job=job,
            output=job.output_location(settings),
            formats=formats,
            options=options,
            options_hash=options_hash(options, formats),
            fingerprint=fingerprint,
            delete_source=job.delete_source if job.delete_source is not None else settings.consumer.delete_source,
        )


@dataclass
class JobContext:
    """Everything about one delivery that outlives a single stage."""

    running: RunningJob
    bridge: Bridge
    job_id: str  # a fallback subject until the body names one
    kind: MessageKind = MessageKind.UNREAD
    metadata: dict[str, Any] = field(default_factory=dict)
    input_uri: str | None = None
    plan: JobPlan | None = None  # set once the body is a valid job request
    outcome: Outcome = Outcome.FAILED
    error_code: str | None = None
    rtf: float | None = None  # for metrics: inference seconds per audio second (fresh transcriptions only)
    audio_s: float | None = None
    manifest_seen: bool = False  # a manifest existed when this delivery started

    @classmethod
    def for_delivery(cls, running: RunningJob, bridge: Bridge) -> JobContext:
        return cls(running=running, bridge=bridge, job_id=fallback_id(running.delivery))

    @property
    def delivery(self) -> Delivery:
        return self.running.delivery

    @property
    def attempt(self) -> int:
        return self.running.delivery.attempt

    @property
    def job(self) -> JobRequest | None:
        return self.plan.job if self.plan is not None else None

    def check_cancelled(self) -> None:
        """A stage boundary: raise JobCancelled once the loop gave up on this job."""
        if self.running.cancelled.is_set():
            raise JobCancelled("the loop gave up on this job")


def fallback_id(delivery: Delivery) -> str:
    """A subject for events about a body we cannot read: its message id, else a hash of it."""
    if delivery.properties.message_id:
        return str(delivery.properties.message_id)[:128]
    return f"unparsed-{hashlib.sha256(delivery.body).hexdigest()[:24]}"
