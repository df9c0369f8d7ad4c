"""`funasr-fleet consume`: one consumer in the foreground (what the supervisor starts N of)."""

from __future__ import annotations

import argparse
import os
import sys

HELP = "run one consumer in the foreground: take jobs from RabbitMQ, transcribe, upload, publish events"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-jobs", type=int, default=None, help="exit 0 after this many jobs (smoke tests, batch runs)"
    )
    # internal: the supervisor starts the zygote of supervisor.preload = "fork" this way
    parser.add_argument("--zygote", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.zygote:
        from funasr_fleet.consumer.zygote import run_zygote

        code = run_zygote()
    else:
        from funasr_fleet.consumer.main import run_consumer

        code = run_consumer(max_jobs=args.max_jobs)
    # Everything is settled and the connection closed. After a deadline, an orphaning or a second
    # signal the worker thread may still be inside the model call: exit without waiting for it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
