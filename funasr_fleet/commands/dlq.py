"""`funasr-fleet dlq list|replay`: look at dead-lettered jobs and send them back (no loss)."""

from __future__ import annotations

import argparse
import json

HELP = "list or replay dead-lettered jobs (listing leaves the queue untouched; replay acks only confirmed copies)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "replay"])
    parser.add_argument("--limit", type=int, default=None, help="at most this many messages")
    parser.add_argument("--job-id", default=None, help="only this job (job_id, or message id of unreadable bodies)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def run(args: argparse.Namespace) -> int:
    import pika

    from funasr_fleet.consumer import dlq
    from funasr_fleet.settings import load_settings

    settings = load_settings()
    try:
        if args.action == "list":
            items = dlq.list_dead(settings, limit=args.limit, job_id=args.job_id)
        else:
            items = dlq.replay(settings, limit=args.limit, job_id=args.job_id)
    except pika.exceptions.AMQPError as exc:
        print(f"funasr-fleet dlq: broker error: {exc!r}")
        return 69  # EX_UNAVAILABLE
    for item in items:
        if args.json:
            print(json.dumps(item.model_dump()))
        else:
            print(
                f"{item.job_id or '-':40} {item.reason or '-':15} error={item.last_error or '-'} deaths={item.deaths} "
                f"attempt={item.attempt or 1} {item.audio or ''}"
            )
    if not args.json:
        verb = "replayed" if args.action == "replay" else "dead-lettered"
        print(f"{len(items)} {verb} job(s) in {settings.amqp.dead_letter_queue}")
    return 0
