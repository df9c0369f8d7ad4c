"""`funasr-fleet announce`: turn broker dead-letters into job.failed events and record queued jobs.

Runs until SIGTERM/SIGINT. Safe to run several times over (each message is handled by one of them; a
redelivered one gets the same event id). See funasr_fleet.announce.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from types import FrameType

HELP = "announce broker dead-letters (job.failed delivery_limit_exceeded) and record jobs published straight to AMQP"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options: everything comes from the settings


def run(args: argparse.Namespace) -> int:
    from funasr_fleet import announce
    from funasr_fleet.logs import setup_logging
    from funasr_fleet.settings import load_settings

    if os.environ.get("FLEET_SUPERVISOR_PID"):  # the supervisor's sidecar: end with it
        from funasr_fleet.consumer.main import die_with_parent

        die_with_parent()
    settings = load_settings()
    setup_logging(settings.log.level, settings.log.format)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    announce.run(settings, stop)
    return 0
