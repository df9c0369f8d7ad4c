"""Result reuse by content: the transcript of identical audio bytes, engine and options, kept in S3.

Beside the manifest (manifest.py), which answers a redelivered *job*; this answers a different job
over the same bytes (a file dropped twice under two names). Entries are transcript JSON documents
(``outputs`` format ``json``) at ``<results_prefix>/_cache/<content key>.json`` in the results
bucket. The cache is an optimisation: a missing or unreadable entry means "transcribe", and a
failed write is logged, never raised.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import structlog

from funasr_fleet.errors import FleetError, ObjectNotFound
from funasr_fleet.keys import join_key
from funasr_fleet.outputs import OutputMeta, parse_json, render

if TYPE_CHECKING:  # pragma: no cover
    from funasr_fleet.engine.transcript import Transcript
    from funasr_fleet.storage import Storage

log = structlog.get_logger(__name__)

CACHE_DIR = "_cache"
"""Under the results prefix: transcript JSON of past jobs keyed by audio hash + engine + options."""


def content_key(audio_sha256: str, engine_fingerprint: str, options: dict[str, Any]) -> str:
    """Result-reuse key (64 hex chars): identical bytes, engine and transcription options give the same transcript.

    ``audio_sha256``: of the downloaded object's bytes; ``options``: the job's ``options`` as JSON.
    """
    canon = json.dumps({"a": audio_sha256, "e": engine_fingerprint, "o": options}, sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()


class ResultCache:
    """Transcripts by content key in ``bucket`` under ``<results_prefix>/_cache/``."""

    def __init__(self, storage: Storage, bucket: str, results_prefix: str) -> None:
        self.storage = storage
        self.bucket = bucket
        self.prefix = join_key(results_prefix, CACHE_DIR)

    def key_for(self, content: str) -> str:
        return join_key(self.prefix, f"{content}.json")

    def get(self, content: str) -> tuple[Transcript, dict[str, Any] | None] | None:
        """(transcript, the audio metadata stored with it) or None when absent or unreadable.

        Raises only what storage raises for reasons other than absence (e.g. StorageUnavailable).
        """
        try:
            raw = self.storage.get_bytes(self.bucket, self.key_for(content))
        except ObjectNotFound:
            return None
        try:
            transcript, meta = parse_json(raw)
        except ValueError as exc:
            log.warning("unreadable cached transcript; transcribing", error=str(exc))
            return None
        return transcript, meta.audio

    def put(self, content: str, transcript: Transcript, meta: OutputMeta) -> None:
        """Store ``transcript`` (rendered as the ``json`` output with ``meta``); failures are only logged."""
        try:
            self.storage.upload_chunks(
                self.bucket,
                self.key_for(content),
                (chunk.encode() for chunk in render("json", transcript, meta)),
                content_type="application/json",
            )
        except FleetError as exc:
            log.warning("could not store the transcript for reuse", error=exc.message)
