"""The job manifest: the commit marker written LAST under a job's output prefix.

Its presence means every output it lists was uploaded. A redelivered job whose manifest matches
(same job, same input object version, same engine, same options and formats) is answered from the
manifest instead of being transcribed again. The reconcile sweep and the client look for
``<output prefix>/manifest.json`` (:data:`MANIFEST_NAME`).
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
