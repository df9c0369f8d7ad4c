"""``[webhooks]``: fleet-wide receivers, job callbacks, signing, the network allow-list and the retry schedule."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from funasr_fleet.settings.section import Section


class WebhookSubscription(BaseModel):
    """One fleet-wide receiver: every event whose type matches ``events`` is POSTed to ``url``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="https URL of the receiver.")
    events: list[str] = Field(
        default_factory=lambda: ["job.*"], description="Event routing keys or patterns: job.succeeded, job.*."
    )


class WebhookSettings(Section):
    subscriptions: list[WebhookSubscription] = Field(
        default_factory=list,
        description='Fleet-wide receivers, e.g. [{url = "https://hooks.example.com/asr", events = ["job.succeeded"]}].',
    )
    callback_events: list[str] = Field(
        default_factory=lambda: ["job.succeeded", "job.failed", "job.cancelled"],
        description="Events POSTed to a job's own `callback` URL.",
    )
    secret: SecretStr | None = Field(None, description="Signing secret (whsec_<base64>, Standard Webhooks). Secret.")
    secret_file: Path | None = Field(None, description="File holding the signing secret (Kubernetes secret mount).")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "Hosts webhooks may go to: exact names or *.domain; empty = any host (still public addresses only)."
        ),
    )
    allow_private_networks: bool = Field(
        False,
        description=(
            "Allow private, loopback, link-local and other non-global addresses "
            "(never for job callbacks you do not trust)."
        ),
    )
    retry_schedule_s: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        description=(
            "Delay before each retry of a failed delivery (about 22 h in all); then the webhook dead-letter queue."
        ),
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="Connect timeout of one delivery.")
    timeout_s: float = Field(
        15.0, gt=0, description="Total time one delivery may take (a slower receiver is retried later)."
    )
    ca_file: Path | None = Field(
        None, description="Extra CA bundle (PEM) trusted besides the system's, for receivers with a private CA."
    )
    queue_prefix: str = Field(
        "fleet.webhooks",
        description="Names of the relay's exchange and queues: <prefix>.events, .deliveries, .delay.<ms>ms, .dlq.",
    )
    concurrency: int = Field(4, ge=1, le=64, description="Deliveries one `funasr-fleet notify` process makes at once.")
    max_backlog: int = Field(
        1_000_000,
        ge=1,
        description="Events waiting for the relay beyond this go to its dead-letter queue (never slow the consumers).",
    )

    @field_validator("retry_schedule_s")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value):
            raise ValueError("retry delays must be positive")
        return value

    def signing_secret(self) -> str | None:
        """The secret's value, from the variable or from its file (None when neither is set)."""
        if self.secret is not None:
            return self.secret.get_secret_value()
        if self.secret_file is not None:
            return self.secret_file.read_text().strip()
        return None
