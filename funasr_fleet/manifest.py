"""The job manifest: the commit marker written LAST under a job's output prefix.

Its presence means every output it lists was uploaded. A job whose output prefix already holds a
manifest that ANSWERS it (``answers``: same input object, same input bytes, same engine, same
options and formats) is answered from the manifest instead of being transcribed again — also when
another job id wrote it: one object's results never flip between job ids. The reconcile sweep and
the client look for ``<output prefix>/manifest.json`` (:data:`MANIFEST_NAME`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from funasr_fleet.keys import join_key

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


def manifest_key(prefix: str) -> str:
    """``<output prefix>/manifest.json`` (just the name at the bucket root)."""
    return join_key(prefix, MANIFEST_NAME)


def options_hash(options: dict[str, Any], formats: list[str]) -> str:
    """Stable hash (32 hex chars) of what changes the outputs besides the audio and the engine."""
    canon = json.dumps({"options": options, "formats": sorted(formats)}, sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()[:32]


class ManifestInput(BaseModel):
    model_config = ConfigDict(extra="allow")

    bucket: str
    key: str
    etag: str | None = None
    size: int | None = None
    sha256: str | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    manifest_version: int = MANIFEST_VERSION
    job_id: str
    input: ManifestInput
    engine_fingerprint: str
    options_hash: str
    options: dict[str, Any] = Field(default_factory=dict)
    formats: list[str]
    outputs: list[str]
    event: dict[str, Any] = Field(description="The data of the job.succeeded event, re-published on redelivery.")
    created: str
    source_deleted: bool = False

    def matches(self, *, job_id: str, engine_fingerprint: str, opts_hash: str) -> bool:
        """Same job, engine and options (the caller checks the input object separately)."""
        return (
            self.job_id == job_id and self.engine_fingerprint == engine_fingerprint and self.options_hash == opts_hash
        )


def _etag(value: str | None) -> str:
    return (value or "").strip('"')


def same_bytes(etag_a: str | None, sha256_a: str | None, etag_b: str | None, sha256_b: str | None) -> bool | None:
    """Whether two sightings of an object hold the same bytes: True/False, or None when unknown.

    SHA-256 decides when both sides have one (the consumer hashes what it downloads); otherwise
    eTags decide when both have one (equal eTags of one key are the same bytes; different eTags
    may still be the same bytes uploaded another way, e.g. multipart, which only costs a rerun).
    """
    if sha256_a and sha256_b:
        return sha256_a == sha256_b
    if _etag(etag_a) and _etag(etag_b):
        return _etag(etag_a) == _etag(etag_b)
    return None


def answers(
    manifest: Manifest,
    *,
    job_id: str,
    bucket: str,
    key: str,
    engine_fingerprint: str,
    opts_hash: str,
    etag: str | None = None,
    sha256: str | None = None,
) -> bool:
    """True when ``manifest`` is the result this job asks for, whichever job id wrote it.

    Pure. Requires the same input bucket and key, the same engine fingerprint and the same options
    hash (options + formats), and the same input bytes (``same_bytes`` of the manifest's eTag /
    SHA-256 and the caller's ``etag`` / ``sha256``, e.g. from a HEAD of the input). When the bytes
    cannot be compared (the caller saw no eTag: the input was deleted after success) only the
    manifest's own job is answered. A manifest written by another job for the same input is an
    answer, not a conflict.
    """
    if manifest.input.bucket != bucket or manifest.input.key != key:
        return False
    if manifest.engine_fingerprint != engine_fingerprint or manifest.options_hash != opts_hash:
        return False
    same = same_bytes(manifest.input.etag, manifest.input.sha256, etag, sha256)
    if same is None:
        return manifest.job_id == job_id
    return same


def records_object(manifest: dict[str, Any], bucket: str, key: str, etag: str | None) -> bool:
    """Whether a raw manifest (JSON) was written for these object bytes (bucket, key, eTag), by any
    job; the sweep's "done" test, which knows no engine or options. False when either eTag is missing."""
    inp = manifest.get("input")
    if not isinstance(inp, dict) or inp.get("bucket") != bucket or inp.get("key") != key:
        return False
    theirs = inp.get("etag") if isinstance(inp.get("etag"), str) else None
    return same_bytes(theirs, None, etag, None) is True


def answer_event_data(manifest: Manifest, *, job_id: str, attempt: int, metadata: dict[str, Any]) -> dict[str, Any]:
    """The ``job.succeeded`` data a job answered from ``manifest`` publishes: the manifest's event
    with THIS job's id, attempt and metadata, and ``reused: "manifest"`` (outputs, input, engine and
    figures stay the manifest's)."""
    return {**manifest.event, "job_id": job_id, "attempt": attempt, "metadata": metadata, "reused": "manifest"}
