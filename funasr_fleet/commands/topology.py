"""`funasr-fleet topology declare|delete`: the broker entities, from settings (idempotent)."""

from __future__ import annotations

import argparse

HELP = "declare (idempotently) or delete the RabbitMQ exchanges and queues named in the settings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["declare", "delete"], help="declare: create/verify; delete: remove all")


def run(args: argparse.Namespace) -> int:
    import pika

    from funasr_fleet import topology
    from funasr_fleet.settings import load_settings

    settings = load_settings()
    params = pika.URLParameters(settings.amqp.url.get_secret_value())
    params.socket_timeout = settings.amqp.connect_timeout_s
    params.connection_attempts = 1
    try:
        conn = pika.BlockingConnection(params)
    except pika.exceptions.AMQPError as exc:
        print(f"funasr-fleet topology: cannot connect to the broker: {exc!r}")
        return 69  # EX_UNAVAILABLE
    try:
        ch = conn.channel()
        if args.action == "declare":
            t = topology.declare(ch, settings.amqp, settings.consumer)
            print(f"exchange {t.jobs_exchange} (direct) -> quorum queue {t.jobs_queue}")
            print(f"exchange {t.dead_letter_exchange} (fanout) -> quorum queue {t.dead_letter_queue}")
            for tier in t.retry_tiers:
                print(f"exchange {t.retry_exchange} --{tier.routing_key}--> {tier.queue} (ttl {tier.delay_ms} ms)")
            print(
                f"exchange {t.events_exchange} (topic): job.started job.progress job.succeeded job.failed job.cancelled"
            )
            print(f"exchange {t.control_exchange} (topic): cancel.<job_id> broadcasts to running consumers")
            print(f"exchange {t.dead_letter_exchange} (fanout) -> quorum queue {t.announce_queue} (the announcer)")
            if t.observed_queue:
                print(f"exchange {t.jobs_exchange} (direct) -> quorum queue {t.observed_queue} (the announcer)")
        else:
            topology.delete(ch, settings.amqp, settings.consumer)
            print("deleted")
    finally:
        conn.close()
    return 0
