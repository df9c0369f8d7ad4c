"""``[amqp]``: the broker connection and the names of the fleet's exchanges and queues."""

from __future__ import annotations

from pydantic import Field, SecretStr

from funasr_fleet.settings.section import Section


class AmqpSettings(Section):
    url: SecretStr = Field(
        SecretStr("amqp://guest:guest@127.0.0.1:5672/%2F"),
        description="Broker URL (amqp:// or amqps://). Secret: holds the password.",
    )
    heartbeat_s: int = Field(30, ge=0, description="AMQP heartbeat interval negotiated with the broker.")
    connect_timeout_s: float = Field(10.0, gt=0, description="Socket connect timeout for one attempt.")
    prefetch: int = Field(1, ge=1, description="Unacked deliveries per consumer. Keep 1: one model, one job.")
    jobs_exchange: str = Field("fleet.jobs", description="Direct exchange jobs are published to.")
    jobs_queue: str = Field("fleet.jobs", description="Quorum queue the consumers read.")
    jobs_routing_key: str = Field("job", description="Routing key binding the jobs queue to the jobs exchange.")
    intake_routing_key: str = Field(
        "s3-event", description="Routing key for S3 bucket-notification records (MinIO) on the jobs exchange."
    )
    dead_letter_exchange: str = Field("fleet.dlx", description="Exchange receiving dead-lettered jobs.")
    dead_letter_queue: str = Field("fleet.jobs.dlq", description="Queue holding dead-lettered jobs.")
    retry_exchange: str = Field("fleet.retry", description="Exchange of the delay (retry) queues.")
    events_exchange: str = Field("fleet.events", description="Topic exchange for job.* events.")
    delivery_limit: int = Field(
        5, ge=1, description="Quorum x-delivery-limit: deliveries (crashes included) before a message dead-letters."
    )
    max_priority: int = Field(
        0,
        ge=0,
        le=10,
        description="0: no priorities. Quorum queues on RabbitMQ 3.10 ignore x-max-priority (see README).",
    )
    control_exchange: str = Field(
        "fleet.control", description="Topic exchange of control broadcasts to running consumers (cancel.<job_id>)."
    )
    announce_queue: str = Field(
        "fleet.jobs.dlq.announce",
        description="Quorum queue on the dead-letter exchange: the announcer publishes job.failed for broker "
        "dead-letters (delivery_limit) and records their status.",
    )
    observed_queue: str = Field(
        "fleet.jobs.observed",
        description="Quorum queue beside the jobs queue holding a copy of every published job: the announcer records "
        "`queued` for jobs published straight to AMQP. Empty = off.",
    )
    observed_max_length: int = Field(
        100_000,
        ge=1,
        description=(
            "Cap on observed_queue; the oldest copies are dropped (those jobs read `unknown` until they start)."
        ),
    )
