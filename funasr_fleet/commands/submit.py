"""`funasr-fleet submit`: publish one job (optionally upload a local file first) and optionally wait.

Output contract (scripts rely on it): without ``--wait`` stdout is the job id; with ``--wait`` and
success, the LAST lines of stdout are the output URIs, one ``s3://...`` per line (manifest last);
on failure stdout's last line is ``failed <error_code>`` and the exit status is non-zero; a job
cancelled while waited for ends with ``cancelled`` (exit status 3).
Logs, the progress bar and the job's warnings (``warning <code>: <message>``) go to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

HELP = "submit an s3:// object (or a local file with --upload) as a job; --wait prints the output URIs"

EXIT_FAILED = 1  # the job failed (its error code is printed)
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: broker or S3 unreachable
EXIT_TIMEOUT = 75  # EX_TEMPFAIL: --timeout passed before the job finished
EXIT_CANCELLED = 3  # the job was cancelled (funasr-fleet cancel) before it finished


def _formats(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        out += [v.strip().lower() for v in value.split(",") if v.strip()]
    return out


def _metadata(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("expected KEY=VALUE")
    return key, val


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", help="s3://bucket/key of the audio, or a local file with --upload")
    parser.add_argument("--upload", action="store_true", help="upload the local file to the inbox bucket first")
    parser.add_argument(
        "--key", default=None, help="with --upload: object key in the inbox (default <inbox_prefix>/<sha256-16>/<name>)"
    )
    parser.add_argument("--wait", action="store_true", help="wait for the job to finish and print its outputs")
    parser.add_argument("--timeout", type=float, default=None, metavar="S", help="with --wait: give up after S seconds")
    parser.add_argument(
        "--formats", nargs="+", default=None, metavar="FMT", help="output formats: json srt vtt txt rttm (or json,srt)"
    )
    parser.add_argument("--output", default=None, metavar="S3URI", help="output bucket/prefix (default: results)")
    parser.add_argument("--job-id", default=None, help="idempotency key (default: derived from the request)")
    parser.add_argument("--hotword", action="append", default=[], help="hotword (repeatable)")
    parser.add_argument("--no-diarize", action="store_true", help="skip speaker diarization")
    parser.add_argument("--num-speakers", type=int, default=None, help="known number of speakers")
    parser.add_argument("--min-speakers", type=int, default=None, metavar="N", help="at least N speakers (a range)")
    parser.add_argument("--max-speakers", type=int, default=None, metavar="N", help="at most N speakers (a range)")
    parser.add_argument(
        "--channels", choices=("auto", "mix", "split"), default=None,
        help="multichannel audio: split (speaker = channel), mix, or auto (the job default)",
    )  # fmt: skip
    parser.add_argument("--language", default=None, help="language hint")
    parser.add_argument(
        "--metadata", type=_metadata, action="append", default=[], metavar="KEY=VALUE", help="passed to every event"
    )
    parser.add_argument("--no-progress", action="store_true", help="with --wait: no progress bar on stderr")
    parser.add_argument(
        "--callback", default=None, metavar="URL", help="https URL the final event is POSTed to (funasr-fleet notify)"
    )


def _upload(args: argparse.Namespace, settings, storage):  # type: ignore[no-untyped-def]
    """Upload the local file; returns the job the bucket-drop path would make for it (same id)."""
    from funasr_fleet import intake
    from funasr_fleet.errors import BadS3Uri

    path = Path(args.audio)
    if not path.is_file():
        raise BadS3Uri(f"{args.audio}: no such file to upload")
    key = args.key
    if key is None:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        prefix = settings.s3.inbox_prefix.strip("/")
        key = f"{prefix + '/' if prefix else ''}{digest.hexdigest()[:16]}/{path.name}"
    bucket = settings.s3.inbox_bucket
    info = storage.upload_file(path, bucket, key)
    print(f"uploaded s3://{bucket}/{key}", file=sys.stderr)
    job = intake.job_for_object(
        settings,
        bucket,
        key,
        info.etag or storage.head(bucket, key).etag,
        size=info.size,
        via="upload",
        formats=_formats(args.formats) if args.formats else None,
    )
    return job


def run(args: argparse.Namespace) -> int:
    from funasr_fleet.client import Client, build_job
    from funasr_fleet.errors import ConfigError, FleetError
    from funasr_fleet.logs import setup_logging
    from funasr_fleet.settings import load_settings

    settings = load_settings()
    setup_logging("WARNING" if settings.log.level == "INFO" else settings.log.level, settings.log.format)
    options: dict[str, object] = {"hotwords": args.hotword, "diarize": not args.no_diarize}
    for name in ("num_speakers", "min_speakers", "max_speakers", "channels"):
        if getattr(args, name) is not None:  # unset options stay out of the body (the job's defaults apply)
            options[name] = getattr(args, name)
    if args.language:
        options["language"] = args.language
    metadata = dict(args.metadata)
    try:
        if args.upload:
            from funasr_fleet.storage import Storage

            dropped = _upload(args, settings, Storage(settings.s3))
            job = build_job(
                dropped.audio,
                output=args.output or dropped.output,
                formats=dropped.formats,
                options=options,
                metadata={**dropped.metadata, **metadata},
                job_id=args.job_id or dropped.job_id,
                callback=args.callback,
            )
        else:
            job = build_job(
                args.audio,
                output=args.output,
                formats=_formats(args.formats) if args.formats else None,
                options=options,
                metadata=metadata,
                job_id=args.job_id,
                callback=args.callback,
            )
        with Client(settings) as client:
            job_id = client.submit(job)
            print(job_id, flush=True)
            if not args.wait:
                return 0
            result = client.wait(job_id, args.timeout, progress=not args.no_progress)
    except ConfigError:
        raise
    except FleetError as exc:
        print(f"funasr-fleet submit: {exc.code}: {exc.message}", file=sys.stderr)
        print(f"failed {exc.code}")
        return EXIT_UNAVAILABLE if not exc.permanent else EXIT_FAILED
    if result.ok:
        for warning in result.warnings:  # succeeded, but not exactly as asked: say so (stderr)
            print(f"funasr-fleet submit: warning {warning.code}: {warning.message}", file=sys.stderr)
        for uri in result.outputs:
            print(uri)
        return 0
    print(f"funasr-fleet submit: job {result.job_id} {result.status}: {result.error_code}: {result.error_message}",
          file=sys.stderr)  # fmt: skip
    if result.status == "cancelled":
        print("cancelled")
        return EXIT_CANCELLED
    print(f"failed {result.error_code}")
    return EXIT_TIMEOUT if result.status == "timeout" else EXIT_FAILED
