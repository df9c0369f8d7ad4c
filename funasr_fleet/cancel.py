"""Cancelling a job by id: a durable marker in S3, a status transition, and a broadcast to consumers.

``funasr-fleet cancel JOB_ID`` / ``Client.cancel(job_id)`` call :func:`request_cancel`:

1. the job's status decides (:func:`decide`, pure): a finished job (succeeded/failed) or an already
   cancelled one is answered as such and nothing is written; an unknown id is answered ``unknown``
   (``force`` leaves a marker anyway, for a job published straight to AMQP that no one recorded yet);
2. the marker ``_fleet/cancel/<job_id>.json`` (results bucket) is created, or the existing one reused:
   consumers check it when a job starts and at every stage boundary, so a cancel survives restarts;
3. a broadcast ``cancel.<job_id>`` goes to the control exchange: a consumer running the job learns it
   within one loop tick even inside a long model call (non-persistent: the marker is the durable part);
4. a QUEUED job becomes ``cancelled`` at once (conditional write: if a consumer started it meanwhile, the
   write loses and the answer is ``cancelling``) and its final ``job.cancelled`` event is published. The
   consumer that later takes the message sees the status and drops it; whoever publishes the event for
   this marker uses the same id (:func:`funasr_fleet.events.cancelled_event_id`), so receivers see one event.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import pika

from funasr_fleet import events, jobstate
from funasr_fleet.errors import ObjectNotFound
from funasr_fleet.jobstatus import JobState, JobStatus, Update, now_iso
from funasr_fleet.settings import Settings
from funasr_fleet.storage import Storage, WriteConflict

Publish = Callable[[str, str, bytes, pika.BasicProperties], None]
"""``publish(exchange, routing_key, body, properties)``, confirmed by the broker (raises BrokerUnavailable)."""


class Outcome(StrEnum):
    CANCELLED = "cancelled"  # it was queued: it will never start; job.cancelled published
    CANCELLING = "cancelling"  # it is running: its consumer stops it and publishes job.cancelled
    REQUESTED = "requested"  # unknown id, forced: a consumer that takes it will drop it
    ALREADY_CANCELLED = "already_cancelled"
    ALREADY_FINISHED = "already_finished"  # succeeded or failed: nothing to cancel
    UNKNOWN = "unknown"  # the fleet has no trace of this id; nothing written


@dataclass(frozen=True)
class CancelAnswer:
    """What a cancel request did; ``status`` is the job's status after it."""

    job_id: str
    outcome: Outcome
    status: JobStatus
    message: str

    @property
    def accepted(self) -> bool:
        return self.outcome in (Outcome.CANCELLED, Outcome.CANCELLING, Outcome.REQUESTED, Outcome.ALREADY_CANCELLED)

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "outcome": self.outcome.value,
            "message": self.message,
            "status": self.status.model_dump(mode="json", exclude_none=True),
        }


def decide(state: JobState, *, force: bool) -> Outcome | None:
    """What a cancel request answers without writing anything, or None when it must act (pure)."""
    if state is JobState.CANCELLED:
        return Outcome.ALREADY_CANCELLED
    if state in (JobState.SUCCEEDED, JobState.FAILED):
        return Outcome.ALREADY_FINISHED
    if state is JobState.UNKNOWN and not force:
        return Outcome.UNKNOWN
    return None


def read_marker(storage: Storage, settings: Settings, job_id: str) -> dict[str, Any] | None:
    """The job's cancel marker (``{"job_id", "id", "requested_at", "by", "reason"}``), or None."""
    return storage.get_json(settings.s3.results_bucket, jobstate.cancel_marker_key(job_id))


def ensure_marker(storage: Storage, settings: Settings, job_id: str, *, reason: str | None = None) -> dict[str, Any]:
    """Create the marker (create-only) or return the one that exists: repeated requests share one id."""
    marker = {
        "job_id": job_id,
        "id": uuid.uuid4().hex[:16],
        "requested_at": now_iso(),
        "by": jobstate.writer_id("cancel"),
        "reason": (reason or "")[:500] or None,
    }
    key = jobstate.cancel_marker_key(job_id)
    try:
        storage.put_json(settings.s3.results_bucket, key, marker, if_none_match=True)
        return marker
    except WriteConflict:
        existing = storage.get_json(settings.s3.results_bucket, key)
        if existing is None:
            raise ObjectNotFound(f"cancel marker of {job_id} vanished while being created") from None
        return existing


def control_body(job_id: str, marker: dict[str, Any]) -> bytes:
    return json.dumps({"type": "cancel", "job_id": job_id, "marker_id": marker["id"]}).encode()


def parse_control(body: bytes) -> tuple[str, str] | None:
    """A control broadcast → ``(job_id, marker_id)`` for a cancel, None for anything else."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("type") != "cancel":
        return None
    job_id, marker_id = data.get("job_id"), data.get("marker_id")
    if not isinstance(job_id, str) or not isinstance(marker_id, str):
        return None
    return job_id, marker_id


def control_routing_key(job_id: str) -> str:
    return f"cancel.{job_id}"


def bind_control_listener(channel: Any, settings: Settings) -> str:
    """An exclusive, auto-deleted queue on the control exchange receiving every ``cancel.*`` broadcast.

    For consumers: consume it on the loop thread and compare each job id with the running job's.
    Returns the queue name.
    """
    channel.exchange_declare(settings.amqp.control_exchange, exchange_type="topic", durable=True)
    queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
    channel.queue_bind(queue, settings.amqp.control_exchange, routing_key="cancel.#")
    return str(queue)


def request_cancel(
    settings: Settings,
    storage: Storage,
    publish: Publish,
    job_id: str,
    *,
    reason: str | None = None,
    force: bool = False,
    output_prefix: str | None = None,
) -> CancelAnswer:
    """Cancel ``job_id`` (see the module docstring). Raises StorageError / BrokerUnavailable."""
    status = jobstate.read(storage, settings, job_id, output_prefix=output_prefix)
    answer = decide(status.state, force=force)
    if answer is not None:
        return CancelAnswer(job_id, answer, status, _MESSAGES[answer].format(state=status.state.value))
    marker = ensure_marker(storage, settings, job_id, reason=reason)
    status.cancel_requested_at = marker.get("requested_at")
    props = pika.BasicProperties(content_type="application/json", delivery_mode=1, timestamp=_now_s())
    publish(settings.amqp.control_exchange, control_routing_key(job_id), control_body(job_id, marker), props)
    if status.state is JobState.UNKNOWN:
        return CancelAnswer(job_id, Outcome.REQUESTED, status, _MESSAGES[Outcome.REQUESTED])
    if status.state is JobState.QUEUED:
        recorded = jobstate.record(
            storage,
            settings,
            Update(
                job_id=job_id,
                state=JobState.CANCELLED,
                by=jobstate.writer_id("cancel"),
                error=events.ErrorInfo(code="job_cancelled", message=reason or "cancelled"),
                only_from=frozenset({JobState.QUEUED}),
            ),
        )  # fmt: skip  (only_from: a consumer that took the job meanwhile stops it itself)
        status = recorded.status
        if recorded.applied:
            publish_cancelled(settings, publish, status, marker)
            return CancelAnswer(job_id, Outcome.CANCELLED, status, _MESSAGES[Outcome.CANCELLED])
        later = decide(status.state, force=force)
        if later is not None:  # it finished (or was cancelled) in the meantime
            return CancelAnswer(job_id, later, status, _MESSAGES[later].format(state=status.state.value))
    return CancelAnswer(job_id, Outcome.CANCELLING, status, _MESSAGES[Outcome.CANCELLING])


def publish_cancelled(
    settings: Settings,
    publish: Publish,
    status: JobStatus,
    marker: dict[str, Any],
    *,
    reply_to: str | None = None,
    correlation_id: str | None = None,
) -> None:
    """The job's final ``job.cancelled`` event (deterministic id), on the topic exchange and to ``reply_to``."""
    event = events.cancelled(status.job_id, str(marker["id"]), attempt=status.attempt or 1, input_uri=status.input)
    headers = {events.CALLBACK_HEADER: status.callback} if status.callback else None
    props = pika.BasicProperties(
        content_type=events.CONTENT_TYPE,
        delivery_mode=2,
        message_id=event.id,
        timestamp=_now_s(),
        type=event.type,
        headers=headers,
    )
    body = events.encode(event)
    publish(settings.amqp.events_exchange, events.routing_key("cancelled"), body, props)
    if reply_to:
        reply = pika.BasicProperties(content_type=events.CONTENT_TYPE, delivery_mode=2, message_id=event.id,
                                     correlation_id=correlation_id, timestamp=_now_s(), type=event.type)  # fmt: skip
        publish("", reply_to, body, reply)


def _now_s() -> int:
    import time

    return int(time.time())


_MESSAGES = {
    Outcome.CANCELLED: "cancelled: the job was queued and will not start",
    Outcome.CANCELLING: "cancel requested: the running job stops at its next stage boundary (or within "
    "jobs.cancel_grace_s inside a model call) and ends with job.cancelled",
    Outcome.REQUESTED: "cancel marker left for an id the fleet has not seen: a consumer that takes this job drops it",
    Outcome.ALREADY_CANCELLED: "the job was already cancelled",
    Outcome.ALREADY_FINISHED: "nothing to cancel: the job already {state}",
    Outcome.UNKNOWN: "unknown job id: nothing to cancel (a job published straight to AMQP is unknown until it is "
    "recorded; --force leaves a cancel marker anyway)",
}
