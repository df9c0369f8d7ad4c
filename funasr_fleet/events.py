"""CloudEvents 1.0 (structured mode, JSON) for job life-cycle events.

Published on the topic exchange under ``job.<kind>`` with content type
``application/cloudevents+json``; the final event (succeeded/failed/cancelled) also goes to the job's
AMQP ``reply_to`` queue with its ``correlation_id``. Consumers of these events (the client, upstream
services, the webhook relay) parse them with :func:`parse`. A job's ``metadata`` is passed through in
every event.

Ids: most events get a fresh UUID. Events that more than one process may publish for the same fact
(``job.cancelled``: the cancel command or the consumer; ``job.failed`` for a broker dead-letter: any
announcer) get a deterministic id and a fixed ``source``, so receivers de-duplicate them by id
(CloudEvents: source + id identify an event; the webhook relay sends the id as ``webhook-id``).
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

CONTENT_TYPE = "application/cloudevents+json"
SPEC_VERSION: Final = "1.0"
TYPE_PREFIX = "io.funasr-fleet.job."
EventKind = Literal["started", "progress", "succeeded", "failed", "cancelled"]
FINAL_KINDS: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
CANCEL_SOURCE = "/funasr-fleet/cancel"
"""``source`` of every ``job.cancelled`` event, whoever publishes it (its id is deterministic too)."""
ANNOUNCER_SOURCE = "/funasr-fleet/announcer"
"""``source`` of the ``job.failed`` events the announcer publishes for broker dead-letters."""
CALLBACK_HEADER = "x-fleet-callback"
"""AMQP header of an event: the job's ``callback`` URL, for the webhook relay (kept out of the body)."""
Stage = Literal["downloaded", "decoded", "transcribing", "transcribed", "uploaded", "retrying"]
STAGE_PROGRESS: dict[str, float] = {"downloaded": 0.1, "decoded": 0.2, "transcribed": 0.8, "uploaded": 0.95}


def transcribing_progress(fraction: float) -> float:
    """A job's progress while the engine is ``fraction`` (0..1) through its audio: between
    ``decoded`` and ``transcribed`` (long recordings report it after every window)."""
    lo, hi = STAGE_PROGRESS["decoded"], STAGE_PROGRESS["transcribed"]
    return round(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), 4)


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class WarningInfo(BaseModel):
    """One transcript warning (``code`` from ``engine.transcript.WarningCode``): the job succeeded,
    but not exactly as asked; ``message`` says what was done instead."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class EventData(BaseModel):
    """The ``data`` of every job event; fields that do not apply to a kind are omitted."""

    model_config = ConfigDict(extra="allow")

    job_id: str
    status: Literal["started", "running", "succeeded", "failed", "cancelled"]
    attempt: int = 1
    metadata: dict[str, Any] = Field(default_factory=dict)
    input: str | None = Field(None, description="s3:// URI of the audio.")
    stage: Stage | None = None
    progress: float | None = Field(None, ge=0, le=1)
    outputs: list[str] | None = Field(None, description="s3:// URIs of the outputs, manifest last.")
    output_prefix: str | None = None
    manifest: str | None = None
    audio_duration_s: float | None = None
    speakers: int | None = None
    sentences: int | None = None
    real_time_factor: float | None = None
    engine_fingerprint: str | None = None
    reused: Literal["manifest", "content"] | None = Field(
        None, description="manifest: redelivery of a finished job; content: transcript reused from identical audio."
    )
    error: ErrorInfo | None = None
    warnings: list[WarningInfo] | None = Field(
        None, description="succeeded: the transcript's warnings ([] when none), as in its JSON's ``warnings``."
    )


class CloudEvent(BaseModel):
    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"] = SPEC_VERSION
    type: str
    source: str
    id: str
    time: str
    subject: str
    datacontenttype: str = "application/json"
    data: EventData

    @property
    def kind(self) -> str:
        return self.type.removeprefix(TYPE_PREFIX)

    @property
    def final(self) -> bool:
        return self.kind in FINAL_KINDS


def default_source(consumer_id: str | None = None) -> str:
    """CloudEvents ``source``: a URI reference naming the consumer."""
    return f"/funasr-fleet/consumers/{consumer_id or f'{socket.gethostname()}:{os.getpid()}'}"


def event_type(kind: str) -> str:
    return f"{TYPE_PREFIX}{kind}"


def routing_key(kind: str) -> str:
    return f"job.{kind}"


def build(kind: EventKind, data: EventData, source: str, *, event_id: str | None = None) -> CloudEvent:
    """One CloudEvent around ``data``: a fresh UUID unless ``event_id`` is given, the time now."""
    return CloudEvent(
        type=event_type(kind),
        source=source,
        id=event_id or str(uuid.uuid4()),
        time=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        subject=data.job_id,
        data=data,
    )


def started(job_id: str, source: str, *, attempt: int, metadata: dict[str, Any], input_uri: str | None) -> CloudEvent:
    return build(
        "started",
        EventData(job_id=job_id, status="started", attempt=attempt, metadata=metadata, input=input_uri),
        source,
    )


def progress(
    job_id: str,
    source: str,
    stage: Stage,
    *,
    attempt: int,
    metadata: dict[str, Any],
    fraction: float | None = None,
    **extra: Any,
) -> CloudEvent:
    value = STAGE_PROGRESS.get(stage, 0.0) if fraction is None else fraction
    data = EventData(
        job_id=job_id, status="running", attempt=attempt, metadata=metadata, stage=stage, progress=value, **extra
    )
    return build("progress", data, source)


def succeeded(data: EventData, source: str) -> CloudEvent:
    return build("succeeded", data, source)


def failed(
    job_id: str,
    source: str,
    *,
    code: str,
    message: str,
    attempt: int,
    metadata: dict[str, Any],
    input_uri: str | None = None,
    event_id: str | None = None,
    **error_extra: Any,
) -> CloudEvent:
    """``job.failed``; ``error_extra`` joins the error object (e.g. ``deliveries`` for a broker dead-letter)."""
    data = EventData(
        job_id=job_id,
        status="failed",
        attempt=attempt,
        metadata=metadata,
        input=input_uri,
        error=ErrorInfo(code=code, message=message[:2000], **error_extra),
    )
    return build("failed", data, source, event_id=event_id)


def cancelled_event_id(job_id: str, marker_id: str) -> str:
    """The one id of a job's ``job.cancelled`` event for one cancel request (marker)."""
    return f"cancelled-{job_id}-{marker_id}"


def cancelled(
    job_id: str,
    marker_id: str,
    *,
    attempt: int = 1,
    metadata: dict[str, Any] | None = None,
    input_uri: str | None = None,
    stage: Stage | None = None,
) -> CloudEvent:
    """``job.cancelled`` (final): same id and source whoever publishes it for this cancel request."""
    data = EventData(
        job_id=job_id,
        status="cancelled",
        attempt=attempt,
        metadata=metadata or {},
        input=input_uri,
        stage=stage,
        error=ErrorInfo(code="job_cancelled", message="the job was cancelled before it finished"),
    )
    return build("cancelled", data, CANCEL_SOURCE, event_id=cancelled_event_id(job_id, marker_id))


def encode(event: CloudEvent) -> bytes:
    return event.model_dump_json(exclude_none=True).encode()


def parse(body: bytes | str | dict[str, Any]) -> CloudEvent:
    """Wire bytes (or a decoded dict) → CloudEvent; raises pydantic.ValidationError/ValueError."""
    if isinstance(body, dict):
        return CloudEvent.model_validate(body)
    return CloudEvent.model_validate(json.loads(body))
