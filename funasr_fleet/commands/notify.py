"""`funasr-fleet notify`: the webhook relay (job callbacks and fleet-wide subscriptions).

Reads job events from its own durable queue, POSTs them signed (Standard Webhooks) and retries failed
deliveries for hours (``webhooks.retry_schedule_s``), then dead-letters them into ``<prefix>.dlq``.
Runs until SIGTERM/SIGINT; several replicas share the work. See funasr_fleet.webhooks.relay.
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

HELP = (
    "relay job events to webhooks (job callbacks, subscriptions): signed POSTs, retries for hours, a dead-letter queue"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--declare-only", action="store_true", help="declare the relay's exchanges and queues, then exit"
    )


def run(args: argparse.Namespace) -> int:
    import pika

    from funasr_fleet.logs import setup_logging
    from funasr_fleet.settings import load_settings
    from funasr_fleet.webhooks import relay
    from funasr_fleet.webhooks.sender import Sender

    settings = load_settings()
    setup_logging(settings.log.level, settings.log.format)
    if args.declare_only:
        conn = pika.BlockingConnection(pika.URLParameters(settings.amqp.url.get_secret_value()))
        try:
            names = relay.declare(conn.channel(), settings)
        finally:
            conn.close()
        print(f"{names.events_queue} {names.deliveries_queue} {names.dlq}")
        return 0
    sender = Sender(settings.webhooks)  # ConfigError (exit 78) without a valid secret, before connecting
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        relay.run(settings, stop, sender=sender)
    finally:
        sender.close()
    return 0
