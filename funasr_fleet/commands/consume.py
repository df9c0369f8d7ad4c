"""`funasr-fleet consume`: one consumer in the foreground (what the supervisor starts N of)."""

from __future__ import annotations

import argparse
import os
import sys

from funasr_fleet import exitcodes

HELP = "run one consumer in the foreground: take jobs from RabbitMQ, transcribe, upload, publish events"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-jobs", type=int, default=None, help="exit 0 after this many jobs (smoke tests, batch runs)"
    )


def run(args: argparse.Namespace) -> int:
    from funasr_fleet.consumer.main import run_consumer

    code = run_consumer(max_jobs=args.max_jobs)
    if code in (exitcodes.JOB_TIMEOUT, exitcodes.ORPHANED):
        # The worker thread may be stuck inside the model call: do not wait for it at shutdown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
