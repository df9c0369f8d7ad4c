"""A valid job's stages: answer from the manifest, or transcribe (or reuse) → upload → commit.

Guarantees kept here:
- the manifest (the commit marker) is written LAST, after every output is uploaded, and the
  message is acked only after the final event is confirmed (settle.py);
- a redelivered job whose manifest matches is answered from the manifest (same event data), not
  transcribed again;
- ``ctx.check_cancelled()`` marks the stage boundaries where a job the loop gave up on stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import structlog

from funasr_fleet import events
from funasr_fleet.consumer.announce import Announcer
from funasr_fleet.consumer.context import JobContext, JobPlan, Outcome
from funasr_fleet.consumer.settle import Settler
from funasr_fleet.consumer.watchdog import deadline_at
from funasr_fleet.engine.audio import decode, probe
from funasr_fleet.engine.transcript import Transcript
from funasr_fleet.errors import ObjectNotFound, WriteConflict
from funasr_fleet.keys import join_key
from funasr_fleet.manifest import Manifest, ManifestInput, answer_event_data, answers, manifest_key
from funasr_fleet.outputs import FORMATS, OutputMeta, render
from funasr_fleet.reuse import ResultCache, content_key
from funasr_fleet.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from funasr_fleet.engine.pipeline import Engine
    from funasr_fleet.s3objects import Downloaded
    from funasr_fleet.storage import Storage

log = structlog.get_logger("funasr_fleet.consumer.stages")


@dataclass(frozen=True)
class Produced:
    """A transcript for the job, and where it came from."""

    transcript: Transcript
    audio_meta: dict[str, Any] | None  # the decoder's view of the audio (container, codec, ...)
    reused: Literal["content"] | None  # from the reuse cache, or None: transcribed now
    source: Downloaded  # the fetched audio object (its etag, size, sha256 go into the manifest)
    content_key: str


class JobStages:
    """The stages of one valid job; holds the process's engine, storage and reuse cache."""

    def __init__(
        self, settings: Settings, engine: Engine, storage: Storage, announcer: Announcer, settler: Settler
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.storage = storage
        self.announcer = announcer
        self.settler = settler
        self.cache = ResultCache(storage, settings.s3.results_bucket, settings.s3.results_prefix)

    def run(self, ctx: JobContext, plan: JobPlan, staging: Path) -> None:
        """The whole job; raises FleetError for the failure path (settle.py) to decide on."""
        self.announcer.started(ctx)
        if self.answer_from_manifest(ctx, plan):
            return
        produced = self.transcribe_or_reuse(ctx, plan, staging)
        uris = self.upload(ctx, plan, produced)
        self.commit(ctx, plan, produced, uris)

    # --- the stages ------------------------------------------------------------------------------
    def answer_from_manifest(self, ctx: JobContext, plan: JobPlan) -> bool:
        """True when the prefix's manifest answers the job (``manifest.answers``: same input object
        and bytes, engine, options; any job id): ``job.succeeded`` published with this job's id,
        attempt and metadata and ``reused: "manifest"``, then acked."""
        out, job = plan.output, plan.job
        raw = self.storage.get_json(out.bucket, manifest_key(out.key))
        if raw is None:
            return False
        ctx.manifest_seen = True
        try:
            manifest = Manifest.model_validate(raw)
        except ValueError:
            log.warning("ignoring an unreadable manifest", prefix=out.key)
            return False
        try:
            etag: str | None = self.storage.head(job.audio.bucket, job.audio.key).etag
        except ObjectNotFound:
            etag = None  # deleted after success (delete_source) or by its owner: the outputs still stand
        if not answers(
            manifest, job_id=ctx.job_id, bucket=job.audio.bucket, key=job.audio.key,
            engine_fingerprint=plan.fingerprint, opts_hash=plan.options_hash, etag=etag,
        ):  # fmt: skip
            log.info("manifest exists but does not answer this job; transcribing again", prefix=out.key)
            return False
        # whichever job id wrote it: the manifest is not rewritten, so results never flip between ids
        log.info("job already done (manifest found); re-publishing its result", manifest_job_id=manifest.job_id)
        data = events.EventData.model_validate(
            answer_event_data(manifest, job_id=ctx.job_id, attempt=ctx.attempt, metadata=ctx.metadata)
        )
        self.settler.succeed(ctx, data, delete_source=False, outcome=Outcome.DUPLICATE)
        return True

    def transcribe_or_reuse(self, ctx: JobContext, plan: JobPlan, staging: Path) -> Produced:
        """Fetch the audio into ``staging``; take the transcript from the reuse cache or the engine."""
        settings, job = self.settings, plan.job
        suffix = PurePosixPath(job.audio.key).suffix[:16] or ".bin"
        source = self.storage.download(
            job.audio.bucket, job.audio.key, staging / f"audio{suffix}", max_bytes=settings.s3.max_object_bytes
        )
        self.announcer.progress(ctx, "downloaded")
        ctx.check_cancelled()
        key = content_key(source.sha256, plan.fingerprint, plan.options)
        if settings.consumer.result_reuse:
            cached = self.cache.get(key)
            if cached is not None:
                log.info("transcript reused from identical audio", content_key=key[:16])
                return Produced(cached[0], cached[1], "content", source, key)
        info = probe(source.path)
        options = job.options.transcribe_options()
        if info.duration_s:
            self._set_deadline(ctx, info.duration_s)
            self.engine.check_memory(info.duration_s, options)  # AudioTooLong (permanent) before decoding
        engine_settings = settings.engine
        # Staged next to the download so the job's staging cleanup frees the disk too.
        with decode(
            source.path, min_audio_s=engine_settings.min_audio_s, max_audio_s=engine_settings.max_audio_s,
            tmp_dir=staging,
        ) as decoded:  # fmt: skip
            self._set_deadline(ctx, decoded.duration_s)
            if not info.duration_s:  # the container did not say: the decoded length does
                self.engine.check_memory(decoded.duration_s, options)
            self.announcer.progress(ctx, "decoded")
            source.path.unlink(missing_ok=True)  # the decoded samples are all the engine reads from here

            def windows_done(fraction: float) -> None:
                # between windows of a long recording: progress, status and a cancel check (raises)
                ctx.check_cancelled()
                if fraction < 1.0:
                    self.announcer.progress(ctx, "transcribing", events.transcribing_progress(fraction))

            transcript = self.engine.transcribe(decoded, options, progress=windows_done)
            audio_meta = decoded.info.as_dict()
        ctx.check_cancelled()
        self.announcer.progress(ctx, "transcribed")
        return Produced(transcript, audio_meta, None, source, key)

    def upload(self, ctx: JobContext, plan: JobPlan, produced: Produced) -> list[str]:
        """Every output format under the job's prefix (and the reuse cache entry); returns their s3:// URIs."""
        out = plan.output
        meta = self._meta(ctx, plan, produced)
        uris: list[str] = []
        for fmt in plan.formats:
            spec = FORMATS[fmt]
            key = join_key(out.key, spec.filename())
            chunks = (chunk.encode() for chunk in render(fmt, produced.transcript, meta))
            self.storage.upload_chunks(out.bucket, key, chunks, content_type=spec.content_type)
            uris.append(f"s3://{out.bucket}/{key}")
        if self.settings.consumer.result_reuse and produced.reused is None:
            self.cache.put(produced.content_key, produced.transcript, meta)
        self.announcer.progress(ctx, "uploaded")
        return uris

    def commit(self, ctx: JobContext, plan: JobPlan, produced: Produced, uris: list[str]) -> None:
        """Write the manifest (the commit marker, LAST), then settle as succeeded.

        Create-only when there was no manifest at the start: if another delivery of this job (a
        duplicate message: publisher retry, at-least-once dead-lettering) committed meanwhile,
        its manifest stands and this delivery answers with ITS event, so every succeeded event of
        a job carries the same data.
        """
        out, job, transcript = plan.output, plan.job, produced.transcript
        manifest_at = manifest_key(out.key)
        manifest_uri = f"s3://{out.bucket}/{manifest_at}"
        rtf = transcript.real_time_factor if produced.reused is None else 0.0
        data = events.EventData(
            job_id=ctx.job_id,
            status="succeeded",
            attempt=ctx.attempt,
            metadata=ctx.metadata,
            input=job.audio.uri,
            outputs=[*uris, manifest_uri],
            output_prefix=f"s3://{out.bucket}/{out.key}",
            manifest=manifest_uri,
            audio_duration_s=round(transcript.duration_ms / 1000, 3),
            speakers=len(transcript.speakers),
            sentences=len(transcript.sentences),
            real_time_factor=round(rtf, 5),
            engine_fingerprint=plan.fingerprint,
            reused=produced.reused,
            warnings=[events.WarningInfo(code=w.code, message=w.message) for w in transcript.warnings],
        )
        source = produced.source
        manifest = Manifest(
            job_id=ctx.job_id,
            input=ManifestInput(
                bucket=job.audio.bucket,
                key=job.audio.key,
                etag=source.info.etag,
                size=source.info.size,
                sha256=source.sha256,
            ),
            engine_fingerprint=plan.fingerprint,
            options_hash=plan.options_hash,
            options=plan.options,
            formats=plan.formats,
            outputs=[*uris, manifest_uri],
            event=data.model_dump(mode="json", exclude_none=True),
            created=datetime.now(UTC).isoformat(),
            source_deleted=plan.delete_source,
        )
        ctx.check_cancelled()
        try:
            self.storage.put_json(
                out.bucket, manifest_at, manifest.model_dump(mode="json"), if_none_match=not ctx.manifest_seen
            )
        except WriteConflict:
            if self.answer_from_manifest(ctx, plan):
                return
            raise
        ctx.rtf = rtf if produced.reused is None else None
        ctx.audio_s = transcript.duration_ms / 1000
        self.settler.succeed(ctx, data, delete_source=plan.delete_source)

    # --- helpers ---------------------------------------------------------------------------------
    def _meta(self, ctx: JobContext, plan: JobPlan, produced: Produced) -> OutputMeta:
        return OutputMeta(source=plan.job.audio.uri, job_id=ctx.job_id, audio=produced.audio_meta)

    def _set_deadline(self, ctx: JobContext, audio_s: float) -> None:
        running = ctx.running
        running.deadline_at = deadline_at(running.started_at, audio_s, self.settings.consumer)
