"""structlog setup: JSON lines for machines, a readable console for people.

Context (job_id, consumer) is bound with ``structlog.contextvars.bind_contextvars`` so every line
of a job carries it. Secrets never reach a log: settings hold them as SecretStr.
"""

from __future__ import annotations

import logging
import sys

import structlog


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer] if use_json else [*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries (pika, boto, funasr) log through stdlib logging: keep them quiet unless debugging.
    logging.basicConfig(level=logging.WARNING if level != "DEBUG" else logging.DEBUG, stream=sys.stderr)
    for noisy in ("pika", "botocore", "boto3", "urllib3", "s3transfer", "modelscope", "jieba"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "DEBUG" else logging.INFO)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name) if name else structlog.get_logger()
