"""One job, start to finish: parse → manifest check → fetch → decode → transcribe → upload →
manifest → final event → ack. Runs on the consumer's single worker thread.

Guarantees kept here:
- the message is acked only after every output is uploaded, the manifest (commit marker) is
  written LAST, and the final event is confirmed by the broker;
- a redelivered job whose manifest matches is answered from the manifest (same event data), not
  transcribed again;
- permanent errors → ``job.failed`` + nack(requeue=False) → the dead-letter queue; transient ones
  (and unexpected exceptions, as ``internal_error``) → re-published to a delay queue with
  ``attempt + 1`` until ``consumer.retry_max_attempts``, then failed + dead-lettered;
- temp files are removed whatever happens (disk use is bounded by one job).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import pika
import structlog

from funasr_fleet import events, metrics, topology
from funasr_fleet.consumer.connection import Bridge, Delivery, JobCancelled, JobSlot
from funasr_fleet.engine.audio import decode, probe
from funasr_fleet.engine.transcript import TranscribeOptions, Transcript
from funasr_fleet.errors import FleetError, JobTimeout, ObjectNotFound
from funasr_fleet.storage import WriteConflict
from funasr_fleet.jobs import JOB_ID_RE, JobRequest, decode_body, message_kind, validate_job
from funasr_fleet.manifest import (
    CACHE_DIR,
    Manifest,
    ManifestInput,
    content_key,
    manifest_key,
    options_hash,
)
from funasr_fleet.outputs import FORMATS, OutputMeta, parse_json, render
from funasr_fleet.pids import pid_alive
from funasr_fleet.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from funasr_fleet.engine.pipeline import Engine
    from funasr_fleet.storage import Storage

log = structlog.get_logger("funasr_fleet.consumer.handler")

_BROKER_HEADERS = ("x-death", "x-delivery-count", "x-first-death-exchange", "x-first-death-queue",
                   "x-first-death-reason", "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason")  # fmt: skip


class InternalError(FleetError):
    """An unexpected exception inside a job (a bug or an unforeseen input); retried, bounded by attempts."""

    code = "internal_error"
    permanent = False


@dataclass
class Attempt:
    """What every event and every settle of this delivery needs."""

    delivery: Delivery
    slot: JobSlot
    job_id: str
    attempt: int
    metadata: dict[str, Any] = field(default_factory=dict)
    input_uri: str | None = None
    job: JobRequest | None = None
    status: str = "failed"
    error_code: str | None = None
    rtf: float | None = None
    audio_s: float | None = None
    manifest_seen: bool = False  # a manifest existed when this delivery started


class JobHandler:
    """Callable the connection loop runs per delivery; holds the process's one engine and storage."""

    def __init__(self, settings: Settings, engine: Engine, storage: Storage, source: str) -> None:
        self.settings = settings
        self.engine = engine
        self.storage = storage
        self.source = source
        sweep_stale_staging(Path(self._tmp_root() or tempfile.gettempdir()))

    # --- entry points (worker thread / loop thread) -------------------------------------------
    def __call__(self, delivery: Delivery, bridge: Bridge, slot: JobSlot) -> None:
        start = time.monotonic()
        att = Attempt(delivery=delivery, slot=slot, job_id=_fallback_id(delivery), attempt=delivery.attempt)
        slot.context["attempt"] = att
        metrics.job_started(_queue_wait(delivery))
        tmp: Path | None = None
        try:
            data = decode_body(delivery.body)
            att.metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
            if isinstance(data.get("job_id"), str) and JOB_ID_RE.match(data["job_id"]):
                att.job_id = data["job_id"]
            if message_kind(data) == "s3-event":
                self._fan_out(att, data, bridge)
                return
            job = validate_job(data, self.settings)
            att.job, att.job_id, att.metadata, att.input_uri = job, str(job.job_id), job.metadata, job.audio.uri
            structlog.contextvars.bind_contextvars(job_id=att.job_id, attempt=att.attempt)
            slot.job_id = att.job_id
            tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self._tmp_root()))
            self._run(att, job, bridge, tmp)
        except FleetError as exc:
            self._failure(att, bridge, exc, transient=not exc.permanent)
        except Exception as exc:  # noqa: BLE001 - never crash the loop; bounded by attempts
            log.exception("unexpected error in job", error=repr(exc))
            self._failure(att, bridge, InternalError(f"{type(exc).__name__}: {exc}"), transient=True)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            metrics.job_finished(
                att.status, att.error_code, duration_s=time.monotonic() - start, rtf=att.rtf, audio_s=att.audio_s
            )

    def on_timeout(self, slot: JobSlot, bridge: Bridge) -> None:
        """Loop thread, deadline passed: settle as a transient ``timeout`` (retry or dead-letter)."""
        att: Attempt | None = slot.context.get("attempt")
        if att is None:
            att = Attempt(delivery=slot.delivery, slot=slot, job_id=_fallback_id(slot.delivery), attempt=slot.delivery.attempt)
        elapsed = time.monotonic() - slot.started_at
        exc = JobTimeout(f"job ran {elapsed:.0f} s, past its deadline; the consumer restarts")
        self._settle_failure(att, bridge, exc, transient=True)

    # --- the job -------------------------------------------------------------------------------
    def _run(self, att: Attempt, job: JobRequest, bridge: Bridge, tmp: Path) -> None:
        s = self.settings
        out = job.output_location(s)
        formats = job.effective_formats(s)
        opts = job.options.model_dump(mode="json")
        ohash = options_hash(opts, formats)
        fingerprint = self.engine.identity.fingerprint
        self._emit(bridge, events.started(att.job_id, self.source, attempt=att.attempt, metadata=att.metadata, input_uri=att.input_uri))

        if self._answer_from_manifest(att, job, out.bucket, out.key, ohash, fingerprint, bridge):
            return

        suffix = PurePosixPath(job.audio.key).suffix[:16] or ".bin"
        dl = self.storage.download(job.audio.bucket, job.audio.key, tmp / f"audio{suffix}", max_bytes=s.s3.max_object_bytes)
        self._progress(att, bridge, "downloaded")
        self._check_cancelled(att)

        transcript: Transcript | None = None
        audio_meta: dict[str, Any] | None = None
        reused: str | None = None
        ckey = content_key(dl.sha256, fingerprint, opts)
        if s.consumer.result_reuse:
            transcript, audio_meta = self._cached(ckey)
            if transcript is not None:
                reused = "content"
                log.info("transcript reused from identical audio", content_key=ckey[:16])
        if transcript is None:
            info = probe(dl.path)
            if info.duration_s:
                self._set_deadline(att, info.duration_s)
            decoded = decode(dl.path, min_audio_s=s.engine.min_audio_s, max_audio_s=s.engine.max_audio_s)
            self._set_deadline(att, decoded.duration_s)
            self._progress(att, bridge, "decoded")
            dl.path.unlink(missing_ok=True)  # the samples are in memory now
            options = TranscribeOptions(
                hotwords=tuple(job.options.hotwords),
                diarize=job.options.diarize,
                num_speakers=job.options.num_speakers,
                language=job.options.language,
            )
            transcript = self.engine.transcribe(decoded, options)
            audio_meta = decoded.info.as_dict()
            self._check_cancelled(att)
            self._progress(att, bridge, "transcribed")

        meta = OutputMeta(source=job.audio.uri, job_id=att.job_id, audio=audio_meta)
        uris: list[str] = []
        for fmt in formats:
            spec = FORMATS[fmt]
            key = f"{out.key}/{spec.filename()}" if out.key else spec.filename()
            self.storage.upload_chunks(
                out.bucket, key, (c.encode() for c in render(fmt, transcript, meta)), content_type=spec.content_type
            )
            uris.append(f"s3://{out.bucket}/{key}")
        if s.consumer.result_reuse and reused is None:
            self._store_cache(ckey, transcript, meta)
        self._progress(att, bridge, "uploaded")

        mkey = manifest_key(out.key)
        manifest_uri = f"s3://{out.bucket}/{mkey}"
        rtf = transcript.real_time_factor if reused is None else 0.0
        data = events.EventData(
            job_id=att.job_id,
            status="succeeded",
            attempt=att.attempt,
            metadata=att.metadata,
            input=job.audio.uri,
            outputs=[*uris, manifest_uri],
            output_prefix=f"s3://{out.bucket}/{out.key}",
            manifest=manifest_uri,
            audio_duration_s=round(transcript.duration_ms / 1000, 3),
            speakers=len(transcript.speakers),
            sentences=len(transcript.sentences),
            real_time_factor=round(rtf, 5),
            engine_fingerprint=fingerprint,
            reused=reused,  # type: ignore[arg-type]
        )
        delete_source = job.delete_source if job.delete_source is not None else s.consumer.delete_source
        manifest = Manifest(
            job_id=att.job_id,
            input=ManifestInput(
                bucket=job.audio.bucket, key=job.audio.key, etag=dl.info.etag, size=dl.info.size, sha256=dl.sha256
            ),
            engine_fingerprint=fingerprint,
            options_hash=ohash,
            options=opts,
            formats=formats,
            outputs=[*uris, manifest_uri],
            event=data.model_dump(mode="json", exclude_none=True),
            created=datetime.now(UTC).isoformat(),
            source_deleted=delete_source,
        )
        self._check_cancelled(att)
        # the commit marker, LAST. Create-only when there was no manifest at the start: if another
        # delivery of this job (a duplicate message: publisher retry, at-least-once dead-lettering)
        # committed meanwhile, its manifest stands and this delivery answers with ITS event, so every
        # succeeded event of a job carries the same data (found by tests/chaos).
        try:
            self.storage.put_json(out.bucket, mkey, manifest.model_dump(mode="json"), if_none_match=not att.manifest_seen)
        except WriteConflict:
            if self._answer_from_manifest(att, job, out.bucket, out.key, ohash, fingerprint, bridge):
                return
            raise
        att.rtf, att.audio_s = (rtf if reused is None else None), transcript.duration_ms / 1000
        self._succeed(att, bridge, data, delete_source=delete_source)

    def _answer_from_manifest(
        self, att: Attempt, job: JobRequest, bucket: str, prefix: str, ohash: str, fingerprint: str, bridge: Bridge
    ) -> bool:
        raw = self.storage.get_json(bucket, manifest_key(prefix))
        if raw is None:
            return False
        att.manifest_seen = True
        try:
            manifest = Manifest.model_validate(raw)
        except ValueError:
            log.warning("ignoring an unreadable manifest", prefix=prefix)
            return False
        if not manifest.matches(job_id=att.job_id, engine_fingerprint=fingerprint, opts_hash=ohash):
            log.info("manifest exists but does not match this job; transcribing again", prefix=prefix)
            return False
        if manifest.input.bucket != job.audio.bucket or manifest.input.key != job.audio.key:
            return False
        try:
            info = self.storage.head(job.audio.bucket, job.audio.key)
            if manifest.input.etag and info.etag != manifest.input.etag:
                log.info("source object changed since the manifest; transcribing again")
                return False
        except ObjectNotFound:
            pass  # deleted after success (delete_source) or by its owner: the outputs still stand
        log.info("job already done (manifest found); re-publishing its result")
        data = events.EventData.model_validate({**manifest.event, "attempt": att.attempt, "reused": "manifest"})
        self._succeed(att, bridge, data, delete_source=False, status="duplicate")
        return True

    def _succeed(self, att: Attempt, bridge: Bridge, data: events.EventData, *, delete_source: bool, status: str = "succeeded") -> None:
        self._check_cancelled(att)
        event = events.succeeded(data, self.source)
        self._publish_final(att, bridge, event)  # failure → transient → retry; the manifest answers it
        if not att.slot.claim_final():
            raise JobCancelled("the loop settled this delivery already")
        if delete_source and att.job is not None:
            try:
                self.storage.delete(att.job.audio.bucket, att.job.audio.key)
            except FleetError as exc:
                log.warning("could not delete the source object", error=exc.message)
        if not bridge.ack(att.delivery):
            log.warning("ack impossible (channel gone); the redelivered copy will be answered from the manifest")
        att.status, att.error_code = status, None
        log.info("job succeeded", outputs=len(data.outputs or []), reused=data.reused)

    # --- failures ------------------------------------------------------------------------------
    def _failure(self, att: Attempt, bridge: Bridge, exc: FleetError, *, transient: bool) -> None:
        if att.slot.cancelled.is_set() or isinstance(exc, JobCancelled):
            att.status, att.error_code = "abandoned", exc.code
            log.warning("job abandoned (the loop settled it)", code=exc.code)
            return
        if not att.slot.claim_final():
            return
        try:
            self._settle_failure(att, bridge, exc, transient=transient)
        except FleetError as exc2:
            log.error("could not settle the failed job; the broker will redeliver it", error=exc2.message)

    def _settle_failure(self, att: Attempt, bridge: Bridge, exc: FleetError, *, transient: bool) -> None:
        """Retry via a delay queue, or publish ``job.failed`` and dead-letter. Caller owns the claim."""
        max_attempts = self.settings.consumer.retry_max_attempts
        att.error_code = exc.code
        if transient and att.attempt < max_attempts and self._is_job_body(att):
            tier = topology.tier_for_attempt(att.attempt, self.settings.amqp, self.settings.consumer)
            expiration = topology.jittered_expiration_ms(tier)
            props = _retry_properties(att.delivery, att.attempt + 1, exc.code, expiration)
            log.warning("transient failure; retrying", code=exc.code, error=exc.message, retry_in_ms=expiration,
                        next_attempt=att.attempt + 1)  # fmt: skip
            try:
                bridge.publish(self.settings.amqp.retry_exchange, tier.routing_key, att.delivery.body, props, mandatory=True)
            except FleetError as pub_exc:
                log.error("could not schedule the retry; requeueing", error=pub_exc.message)
                bridge.nack(att.delivery, requeue=True)
                att.status = "requeued"
                return
            self._emit(
                bridge,
                events.progress(att.job_id, self.source, "retrying", attempt=att.attempt, metadata=att.metadata,
                                fraction=0.0, error=events.ErrorInfo(code=exc.code, message=exc.message)),
            )  # fmt: skip
            bridge.ack(att.delivery)
            att.status = "retried"
            return
        log.error("job failed", code=exc.code, error=exc.message, permanent=not transient, attempts=att.attempt)
        event = events.failed(att.job_id, self.source, code=exc.code, message=exc.message, attempt=att.attempt,
                              metadata=att.metadata, input_uri=att.input_uri)  # fmt: skip
        try:
            self._publish_final(att, bridge, event)
        except FleetError as pub_exc:
            log.error("failed event not confirmed; dead-lettering anyway", error=pub_exc.message)
        bridge.nack(att.delivery, requeue=False)  # → DLX → dead-letter queue
        att.status = "failed"

    def _is_job_body(self, att: Attempt) -> bool:
        return att.job is not None  # only validated job bodies are worth a retry

    # --- s3 bucket events ----------------------------------------------------------------------
    def _fan_out(self, att: Attempt, data: dict[str, Any], bridge: Bridge) -> None:
        """A bucket notification becomes one job message per object (ack after all are confirmed)."""
        try:
            from funasr_fleet import intake
        except ImportError:
            raise FleetError("this consumer cannot read S3 event records (no intake module)", code="intake_unavailable") from None
        result = intake.parse_notification(data, self.settings)
        if not isinstance(result, list):
            log.info("bucket event ignored", reason=getattr(result, "reason", str(result)))
            if att.slot.claim_final():
                bridge.ack(att.delivery)
            att.status = "ignored"
            return
        for job in result:
            props = pika.BasicProperties(
                content_type="application/json",
                delivery_mode=2,
                message_id=job.job_id,
                timestamp=int(time.time()),
                reply_to=att.delivery.properties.reply_to,
                correlation_id=att.delivery.properties.correlation_id,
            )
            bridge.publish(self.settings.amqp.jobs_exchange, self.settings.amqp.jobs_routing_key, job.to_body(), props, mandatory=True)
        if not att.slot.claim_final():
            return
        bridge.ack(att.delivery)
        att.status = "fanned_out"
        log.info("bucket event turned into jobs", jobs=[j.job_id for j in result])

    # --- helpers -------------------------------------------------------------------------------
    def _publish_final(self, att: Attempt, bridge: Bridge, event: events.CloudEvent) -> None:
        body = events.encode(event)
        bridge.publish(self.settings.amqp.events_exchange, events.routing_key(event.kind), body, _event_properties(event))
        reply_to = att.delivery.properties.reply_to
        if reply_to:
            props = _event_properties(event, correlation_id=att.delivery.properties.correlation_id)
            try:
                bridge.publish("", reply_to, body, props)
            except FleetError as exc:
                log.warning("reply_to publish failed", reply_to=reply_to, error=exc.message)

    def _emit(self, bridge: Bridge, event: events.CloudEvent) -> None:
        """Non-final events: best effort (a lost progress event must not fail the job)."""
        if event.kind == "progress" and not self.settings.consumer.progress_events and event.data.stage != "retrying":
            return
        try:
            bridge.publish(self.settings.amqp.events_exchange, events.routing_key(event.kind), events.encode(event), _event_properties(event))
        except FleetError as exc:
            log.warning("event publish failed", kind=event.kind, error=exc.message)

    def _progress(self, att: Attempt, bridge: Bridge, stage: events.Stage) -> None:
        self._emit(bridge, events.progress(att.job_id, self.source, stage, attempt=att.attempt, metadata=att.metadata))

    def _set_deadline(self, att: Attempt, duration_s: float) -> None:
        c = self.settings.consumer
        att.slot.deadline_at = att.slot.started_at + c.deadline_base_s + c.deadline_factor * duration_s

    def _check_cancelled(self, att: Attempt) -> None:
        if att.slot.cancelled.is_set():
            raise JobCancelled("the loop gave up on this job")

    def _tmp_root(self) -> str | None:
        root = self.settings.consumer.tmp_dir
        if root is None:
            return None
        root.mkdir(parents=True, exist_ok=True)
        return str(root)

    def _cache_location(self, ckey: str) -> tuple[str, str]:
        prefix = self.settings.s3.results_prefix.strip("/")
        key = f"{prefix}/{CACHE_DIR}/{ckey}.json" if prefix else f"{CACHE_DIR}/{ckey}.json"
        return self.settings.s3.results_bucket, key

    def _cached(self, ckey: str) -> tuple[Transcript | None, dict[str, Any] | None]:
        bucket, key = self._cache_location(ckey)
        try:
            raw = self.storage.get_bytes(bucket, key)
        except ObjectNotFound:
            return None, None
        try:
            transcript, meta = parse_json(raw)
        except ValueError as exc:
            log.warning("unreadable cached transcript; transcribing", error=str(exc))
            return None, None
        return transcript, meta.audio

    def _store_cache(self, ckey: str, transcript: Transcript, meta: OutputMeta) -> None:
        bucket, key = self._cache_location(ckey)
        try:
            self.storage.upload_chunks(
                bucket, key, (c.encode() for c in render("json", transcript, meta)), content_type="application/json"
            )
        except FleetError as exc:  # the cache is an optimisation: never fail a job for it
            log.warning("could not store the transcript for reuse", error=exc.message)


STAGING_PREFIX = "fleet-job-"


def sweep_stale_staging(root: Path) -> int:
    """Remove staging dirs ``fleet-job-<pid>-*`` whose consumer process is gone.

    A SIGKILLed consumer (OOM killer, hung-kill, chaos) cannot run its ``finally``; the next consumer
    to boot on this machine removes what the dead one left. Dirs of live processes are kept (several
    consumers may share ``consumer.tmp_dir``). Returns how many were removed.
    """
    removed = 0
    try:
        entries = list(root.glob(f"{STAGING_PREFIX}*-*"))
    except OSError:
        return 0
    for entry in entries:
        pid_text = entry.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or pid_alive(int(pid_text)):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    if removed:
        log.info("removed staging dirs of dead consumers", count=removed, dir=str(root))
    return removed


    return True


def _fallback_id(delivery: Delivery) -> str:
    """A subject for events about a body we cannot read: its message id, else a hash of it."""
    if delivery.properties.message_id:
        return str(delivery.properties.message_id)[:128]
    import hashlib

    return f"unparsed-{hashlib.sha256(delivery.body).hexdigest()[:24]}"


def _queue_wait(delivery: Delivery) -> float | None:
    ts = delivery.properties.timestamp
    if not ts or delivery.attempt > 1:
        return None
    return max(0.0, time.time() - float(ts))


def _event_properties(event: events.CloudEvent, correlation_id: str | None = None) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=events.CONTENT_TYPE,
        delivery_mode=2,
        message_id=event.id,
        correlation_id=correlation_id,
        timestamp=int(time.time()),
        type=event.type,
    )


def _retry_properties(delivery: Delivery, next_attempt: int, code: str, expiration_ms: int) -> pika.BasicProperties:
    p = delivery.properties
    headers = {k: v for k, v in (p.headers or {}).items() if k not in _BROKER_HEADERS}
    headers[topology.ATTEMPT_HEADER] = next_attempt
    headers[topology.RETRY_REASON_HEADER] = code
    return pika.BasicProperties(
        content_type=p.content_type or "application/json",
        delivery_mode=2,
        message_id=p.message_id,
        correlation_id=p.correlation_id,
        reply_to=p.reply_to,
        timestamp=p.timestamp,
        headers=headers,
        expiration=str(expiration_ms),
    )
