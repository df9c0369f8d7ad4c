"""`funasr-fleet sweep`: enqueue inbox audio that has no result yet (bucket events can be lost).

``--once`` runs one sweep and prints its report as one JSON line; without it the sweep repeats
every ``intake.sweep_interval_s`` until SIGTERM/SIGINT, surviving broker/S3 outages (logged, retried
next round). Safe to run in several places at once: conditional marker writes enqueue each object once.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from types import FrameType

HELP = "enqueue inbox objects without a result manifest (reconcile lost bucket events); --once or periodic"

EXIT_UNAVAILABLE = 69


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="one sweep, then exit")
    parser.add_argument(
        "--interval", type=float, default=None, metavar="S", help="seconds between sweeps (intake.sweep_interval_s)"
    )
    parser.add_argument(
        "--min-age", type=float, default=0.0, metavar="S",
        help="leave objects younger than S seconds to their bucket event (default 0)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from funasr_fleet import reconcile
    from funasr_fleet.errors import ConfigError, FleetError
    from funasr_fleet.logs import get_logger, setup_logging
    from funasr_fleet.publisher import Publisher
    from funasr_fleet.settings import load_settings
    from funasr_fleet.storage import Storage

    settings = load_settings()
    setup_logging(settings.log.level, settings.log.format)
    log = get_logger("sweep")
    storage = Storage(settings.s3)
    interval = args.interval if args.interval is not None else settings.intake.sweep_interval_s
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if not args.once:
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    while True:
        # A fresh connection per round: an idle one would miss heartbeats between rounds.
        try:
            with Publisher(settings) as publisher:
                report = reconcile.sweep(settings, storage, publisher, min_age_s=args.min_age)
        except ConfigError:
            raise
        except FleetError as exc:
            log.error("sweep failed", code=exc.code, error=exc.message)
            if args.once:
                return EXIT_UNAVAILABLE if not exc.permanent else 1
        else:
            print(json.dumps(report.as_dict()), flush=True)
            log.info("sweep done", **{k: v for k, v in report.as_dict().items() if k != "job_ids"})
            if args.once:
                return 0
        if stop.wait(interval):
            return 0
