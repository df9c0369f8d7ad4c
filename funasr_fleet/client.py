"""Submit jobs to the fleet and wait for their results (the CLI and upstream Python services use this).

```python
from funasr_fleet.client import Client
from funasr_fleet.settings import load_settings

with Client(load_settings()) as fleet:
    job_id = fleet.submit("s3://calls/2026/11/call-42.wav", formats=["json", "srt"])
    result = fleet.wait(job_id, timeout_s=1800)
    if result.ok:
        print(result.outputs)          # s3:// URIs, manifest last
    else:
        print(result.error_code)       # a stable code from funasr_fleet.errors
    print(fleet.status(job_id).state)  # queued, running, succeeded, failed, cancelled, unknown
    fleet.cancel(other_job_id)         # CancelAnswer: cancelled / cancelling / already_finished / unknown
```

Status: before publishing, the publisher records the job as ``queued`` in its status object
(``funasr_fleet.jobstate``); a failed publish records ``failed`` (``broker_unavailable``) instead.

This module is the facade: ``Client`` and the one-call helpers. Publishing lives in
``funasr_fleet.publisher``, waiting for events (and ``JobResult``) in ``funasr_fleet.waiting``.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any, TextIO

import structlog

from funasr_fleet import jobstate
from funasr_fleet.errors import BrokerUnavailable
from funasr_fleet.jobs import JobOptions, JobRequest, check_allowed
from funasr_fleet.publisher import Publisher
from funasr_fleet.s3uri import S3Location, parse_s3_uri
from funasr_fleet.settings import Settings
from funasr_fleet.waiting import (
    WAIT_TIMEOUT_CODE,
    EventWatcher,
    JobResult,
    ProgressCallback,
    default_output,
    result_from_manifest,
)

__all__ = ["WAIT_TIMEOUT_CODE", "Client", "JobResult", "build_job", "status", "submit", "wait"]

log = structlog.get_logger(__name__)


def build_job(
    audio: str | S3Location,
    *,
    output: str | S3Location | None = None,
    formats: list[str] | None = None,
    options: JobOptions | dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    job_id: str | None = None,
    delete_source: bool | None = None,
    callback: str | None = None,
) -> JobRequest:
    """A validated JobRequest (raises the FleetError naming what is wrong; ``callback_invalid`` for a bad URL)."""
    body: dict[str, Any] = {
        "audio": parse_s3_uri(audio).uri if isinstance(audio, str) else audio,
        "formats": formats or [],
        "options": options.model_dump() if isinstance(options, JobOptions) else (options or {}),
        "metadata": metadata or {},
    }
    if output is not None:
        body["output"] = parse_s3_uri(output, allow_empty_key=True) if isinstance(output, str) else output
    if job_id is not None:
        body["job_id"] = job_id
    if delete_source is not None:
        body["delete_source"] = delete_source
    if callback is not None:
        body["callback"] = callback
    from funasr_fleet.jobs import validate_job

    return validate_job(body)


class Client:
    """One broker connection: an event watcher (made first) plus a confirming publisher."""

    def __init__(self, settings: Settings, *, declare: bool = True) -> None:
        self.settings = settings
        self.watcher = EventWatcher(settings)
        self.publisher = Publisher(settings, connection=self.watcher.connection, declare=declare)
        self._outputs: dict[str, S3Location] = {}

    def submit(
        self,
        audio: str | S3Location | JobRequest,
        *,
        output: str | S3Location | None = None,
        formats: list[str] | None = None,
        options: JobOptions | dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        job_id: str | None = None,
        delete_source: bool | None = None,
        callback: str | None = None,
    ) -> str:
        """Publish one job (confirmed) with this client's queue as ``reply_to``; returns its id.

        ``callback``: an https URL the job's final event is POSTed to (needs ``funasr-fleet notify``).
        """
        job = (
            audio
            if isinstance(audio, JobRequest)
            else build_job(
                audio,
                output=output,
                formats=formats,
                options=options,
                metadata=metadata,
                job_id=job_id,
                delete_source=delete_source,
                callback=callback,
            )
        )
        check_allowed(job, self.settings)  # bucket and callback allow-lists: refuse before publishing
        self._outputs[str(job.job_id)] = job.output_location(self.settings)
        return self.publisher.publish(job, reply_to=self.watcher.queue, correlation_id=str(job.job_id))

    def status(self, job_id: str) -> jobstate.JobStatus:
        """The job's status (``funasr_fleet.jobstate.JobStatus``); ``state`` is ``unknown`` for an unseen id.

        Raises StorageError when S3 cannot be read.
        """
        out = self._outputs.get(job_id)
        prefix = f"s3://{out.bucket}/{out.key}" if out is not None else None
        return jobstate.read(self.publisher.storage, self.settings, job_id, output_prefix=prefix)

    def cancel(self, job_id: str, *, reason: str | None = None, force: bool = False) -> Any:
        """Cancel a job (``funasr_fleet.cancel.CancelAnswer``): a queued job never starts, a running one stops.

        Finished and unknown jobs are answered as such (``outcome``) and nothing changes; ``force``
        leaves a cancel marker for an id the fleet has not recorded (published straight to AMQP).
        Raises StorageError / BrokerUnavailable.
        """
        from funasr_fleet.cancel import request_cancel

        out = self._outputs.get(job_id)
        prefix = f"s3://{out.bucket}/{out.key}" if out is not None else None
        return request_cancel(
            self.settings, self.publisher.storage, self.publisher.send, job_id, reason=reason, force=force,
            output_prefix=prefix,
        )  # fmt: skip

    def wait(
        self,
        job_id: str,
        timeout_s: float | None = None,
        *,
        progress: bool | ProgressCallback = False,
        stream: TextIO | None = None,
    ) -> JobResult:
        """Wait for the final event. If the connection was lost meanwhile (e.g. missed heartbeats while
        the caller was busy), reconnect once and fall back to the job's manifest for events missed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            return self.watcher.wait(job_id, timeout_s, progress=progress, stream=stream)
        except BrokerUnavailable as exc:
            log.warning("event connection lost; reconnecting", error=exc.message)
        self.publisher.close()
        self.watcher.close()
        self.watcher = EventWatcher(self.settings)
        self.publisher = Publisher(self.settings, connection=self.watcher.connection, declare=False)
        location = self._outputs.get(job_id) or default_output(self.settings, job_id)
        done = result_from_manifest(self.settings, job_id, location)
        if done is not None:
            return done
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        result = self.watcher.wait(job_id, remaining, progress=progress, stream=stream)
        if result.status == "timeout":
            return result_from_manifest(self.settings, job_id, location) or result
        return result

    def output_location(self, job_id: str) -> S3Location | None:
        return self._outputs.get(job_id)

    def close(self) -> None:
        self.publisher.close()
        self.watcher.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


# --- one-call helpers ------------------------------------------------------------------------------
def submit(settings: Settings, audio: str | S3Location | JobRequest, **kwargs: Any) -> str:
    """Fire and forget: publish one job (confirmed) and return its id."""
    job = audio if isinstance(audio, JobRequest) else build_job(audio, **kwargs)
    with Publisher(settings) as publisher:
        return publisher.publish(job)


def status(settings: Settings, job_id: str, *, output: str | None = None) -> jobstate.JobStatus:
    """A job's status without a broker connection (``output``: its s3:// prefix when not the default)."""
    from funasr_fleet.storage import Storage

    return jobstate.read(Storage(settings.s3), settings, job_id, output_prefix=output)


def wait(
    settings: Settings,
    job_id: str,
    timeout_s: float | None = None,
    *,
    output: str | S3Location | None = None,
    progress: bool | ProgressCallback = False,
) -> JobResult:
    """Wait for a job submitted elsewhere: a finished job is answered from its manifest, else events.

    ``output`` is the job's output prefix when it is not the default ``results_prefix/<job_id>``.
    Events published before this call are not seen, so the manifest is checked again on timeout.
    """
    location = (parse_s3_uri(output, allow_empty_key=True) if isinstance(output, str) else output) or default_output(
        settings, job_id
    )
    with EventWatcher(settings) as watcher:
        done = result_from_manifest(settings, job_id, location)
        if done is not None:
            return done
        result = watcher.wait(job_id, timeout_s, progress=progress)
    if result.status == "timeout":
        return result_from_manifest(settings, job_id, location) or result
    return result
