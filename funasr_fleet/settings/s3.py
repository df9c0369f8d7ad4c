"""``[s3]``: the S3 endpoint, credentials (or files holding them), timeouts and the fleet's buckets."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from funasr_fleet.settings.section import Section


class S3Settings(Section):
    endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO/SeaweedFS URL); unset = AWS.")
    access_key: SecretStr | None = Field(None, description="Access key id. Secret.")
    secret_key: SecretStr | None = Field(None, description="Secret access key. Secret.")
    access_key_file: Path | None = Field(None, description="File holding the access key (Kubernetes secret mount).")
    secret_key_file: Path | None = Field(None, description="File holding the secret key.")
    region: str = Field("us-east-1", description="Region name sent to the S3 server.")
    addressing_style: Literal["path", "virtual", "auto"] = Field("path", description="Bucket addressing style.")
    connect_timeout_s: float = Field(5.0, gt=0, description="Connect timeout per request.")
    read_timeout_s: float = Field(60.0, gt=0, description="Read timeout per request.")
    max_attempts: int = Field(3, ge=1, description="boto3's own retries per call (the job retry comes on top).")
    results_bucket: str = Field("fleet-results", description="Default bucket for job outputs.")
    results_prefix: str = Field("results", description="Default key prefix for job outputs (then /<job_id>/).")
    inbox_bucket: str = Field("fleet-inbox", description="Bucket users drop audio into (bucket-drop intake, sweep).")
    inbox_prefix: str = Field("", description="Only keys under this prefix are taken from the inbox.")
    allowed_buckets: list[str] = Field(
        default_factory=list, description="Buckets jobs may read from; empty = any bucket."
    )
    max_object_bytes: int = Field(2 * 1024**3, gt=0, description="Larger audio objects fail with object_too_large.")

    def credential(self, which: Literal["access_key", "secret_key"]) -> str | None:
        """The secret's value, from the variable or from its file."""
        value: SecretStr | None = getattr(self, which)
        if value is not None:
            return value.get_secret_value()
        path: Path | None = getattr(self, f"{which}_file")
        if path is not None:
            return path.read_text().strip()
        return None
