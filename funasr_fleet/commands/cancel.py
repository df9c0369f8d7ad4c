"""`funasr-fleet cancel JOB_ID`: stop a queued or running job (a finished or unknown one is left alone).

Prints what happened (cancelled, cancelling, already_finished, already_cancelled, unknown, requested).
``--wait`` waits for a running job's final event. Exit status: 0 the job is (being) cancelled, 3 it had
already finished (or finished before the cancel took effect), 4 unknown id, 69 broker/S3 unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "cancel a queued or running job by id (finished and unknown jobs are answered, not changed)"

EXIT_FINISHED = 3
EXIT_UNKNOWN = 4
EXIT_UNAVAILABLE = 69


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", metavar="JOB_ID")
    parser.add_argument("--reason", default=None, help="recorded in the marker and the status")
    parser.add_argument(
        "--force", action="store_true", help="leave a cancel marker even for an id the fleet has not recorded"
    )
    parser.add_argument("--wait", action="store_true", help="wait until a running job has stopped")
    parser.add_argument("--timeout", type=float, default=None, metavar="S", help="with --wait: give up after S seconds")
    parser.add_argument("--json", action="store_true", help="print the answer (and the status) as JSON")


def run(args: argparse.Namespace) -> int:
    from funasr_fleet.cancel import Outcome
    from funasr_fleet.client import Client
    from funasr_fleet.errors import ConfigError, FleetError
    from funasr_fleet.logs import setup_logging
    from funasr_fleet.settings import load_settings

    settings = load_settings()
    setup_logging("WARNING" if settings.log.level == "INFO" else settings.log.level, settings.log.format)
    result = None
    try:
        with Client(settings) as client:
            answer = client.cancel(args.job_id, reason=args.reason, force=args.force)
            if args.wait and answer.outcome is Outcome.CANCELLING:
                result = client.wait(args.job_id, args.timeout)
    except ConfigError:
        raise
    except FleetError as exc:
        print(f"funasr-fleet cancel: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE if not exc.permanent else 1
    if args.json:
        out = answer.as_dict()
        if result is not None:
            out["final"] = {"status": result.status, "error_code": result.error_code}
        print(json.dumps(out, indent=2))
    else:
        print(f"{args.job_id}: {answer.outcome.value}: {answer.message}")
        if result is not None:
            print(f"{args.job_id}: ended {result.status}" + (f" ({result.error_code})" if result.error_code else ""))
    if answer.outcome is Outcome.UNKNOWN:
        return EXIT_UNKNOWN
    if answer.outcome is Outcome.ALREADY_FINISHED or (result is not None and result.status in ("succeeded", "failed")):
        return EXIT_FINISHED
    return 0
