"""funasr-fleet: single-model FunASR consumer processes fed by RabbitMQ, reading and writing S3."""

__version__ = "0.1.0"
