"""CloudEvents 1.0 (structured mode, JSON) for job life-cycle events.

Published on the topic exchange under ``job.<kind>`` with content type
``application/cloudevents+json``; the final event (succeeded/failed) also goes to the job's AMQP
``reply_to`` queue with its ``correlation_id``. Consumers of these events (the client, upstream
services) parse them with :func:`parse`. A job's ``metadata`` is passed through in every event.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CONTENT_TYPE = "application/cloudevents+json"
SPEC_VERSION = "1.0"
TYPE_PREFIX = "io.funasr-fleet.job."
EventKind = Literal["started", "progress", "succeeded", "failed"]
FINAL_KINDS: frozenset[str] = frozenset({"succeeded", "failed"})
Stage = Literal["downloaded", "decoded", "transcribed", "uploaded", "retrying"]
STAGE_PROGRESS: dict[str, float] = {"downloaded": 0.1, "decoded": 0.2, "transcribed": 0.8, "uploaded": 0.95}


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
    status: Literal["started", "running", "succeeded", "failed"]
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


def build(kind: EventKind, data: EventData, source: str) -> CloudEvent:
    """One CloudEvent (fresh id and time) around ``data``."""
    return CloudEvent(
        type=event_type(kind),
        source=source,
        id=str(uuid.uuid4()),
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
) -> CloudEvent:
    data = EventData(
        job_id=job_id,
        status="failed",
        attempt=attempt,
        metadata=metadata,
        input=input_uri,
        error=ErrorInfo(code=code, message=message[:2000]),
    )
    return build("failed", data, source)


def encode(event: CloudEvent) -> bytes:
    return event.model_dump_json(exclude_none=True).encode()


def parse(body: bytes | str | dict[str, Any]) -> CloudEvent:
    """Wire bytes (or a decoded dict) → CloudEvent; raises pydantic.ValidationError/ValueError."""
    if isinstance(body, dict):
        return CloudEvent.model_validate(body)
    return CloudEvent.model_validate(json.loads(body))
