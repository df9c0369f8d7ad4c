"""`funasr-fleet status JOB_ID`: a job's state by id (queued, running, succeeded, failed, cancelled, unknown).

Reads the job's status object in S3 (no broker). ``--json`` prints the whole status object. Exit status:
0 when the job is known, 4 when the fleet has no trace of the id, 69 when S3 cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "show a job's status by id: queued, running (stage, progress), succeeded, failed, cancelled or unknown"

EXIT_UNKNOWN = 4
EXIT_UNAVAILABLE = 69


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", metavar="JOB_ID")
    parser.add_argument("--json", action="store_true", help="print the status object as JSON")
    parser.add_argument(
        "--output",
        default=None,
        metavar="S3URI",
        help="the job's output prefix, when not the default (finds its manifest)",
    )


def run(args: argparse.Namespace) -> int:
    from funasr_fleet.client import status
    from funasr_fleet.errors import ConfigError, FleetError
    from funasr_fleet.jobstatus import JobState
    from funasr_fleet.settings import load_settings

    settings = load_settings()
    try:
        st = status(settings, args.job_id, output=args.output)
    except ConfigError:
        raise
    except FleetError as exc:
        print(f"funasr-fleet status: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE if not exc.permanent else 1
    if args.json:
        print(json.dumps(st.model_dump(mode="json", exclude_none=True), indent=2))
    else:
        print(render(st))
    return EXIT_UNKNOWN if st.state is JobState.UNKNOWN else 0


def render(st) -> str:  # type: ignore[no-untyped-def]
    """Human-readable lines for a JobStatus."""
    head = f"{st.job_id}: {st.state.value}"
    if st.stage:
        head += f" ({st.stage}" + (f", {st.progress * 100:.0f}%" if st.progress is not None else "") + ")"
    if st.error is not None:
        head += f": {st.error.code}: {st.error.message}"
    lines = [head]
    if st.cancel_requested_at and not st.final:
        lines.append(f"  cancel requested at {st.cancel_requested_at}")
    for key in ("input", "output_prefix", "manifest"):
        value = getattr(st, key)
        if value:
            lines.append(f"  {key.replace('_', ' ')}: {value}")
    if st.attempt:
        lines.append(f"  attempt: {st.attempt}" + (f" (run {st.run})" if st.run > 1 else ""))
    for state, at in st.times.items():
        lines.append(f"  {state} at {at}")
    if st.source == "manifest":
        lines.append("  (from the job's manifest)")
    return "\n".join(lines)
