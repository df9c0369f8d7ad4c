"""`funasr-fleet transcribe FILE...`: local files in, transcript files out (no broker, no S3).

Loads the engine once (settings from FLEET_ENGINE__* / the config file), then transcribes each
file in turn, writing ``<stem>.<format>`` into the output directory. Progress, per-file errors
(with their stable error code) and transcript warnings (``warning <code>: <message>``) go to
stderr; the exit status is non-zero if any file failed (a warning is not a failure).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = "transcribe local audio/video files into json/srt/vtt/txt/rttm files"

EXIT_FILE_FAILED = 1
EXIT_MODEL_LOAD = 3


def _formats(value: str) -> list[str]:
    from funasr_fleet.settings import ALL_FORMATS

    names = [v.strip().lower() for v in value.split(",") if v.strip()]
    unknown = sorted(set(names) - set(ALL_FORMATS))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown format(s) {unknown or value!r}; choose from {','.join(ALL_FORMATS)}")
    return list(dict.fromkeys(names))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="audio or video files (any common format)")
    parser.add_argument(
        "-f", "--formats", type=_formats, default=None,
        help="comma-separated output formats: json,srt,vtt,txt,rttm (default: outputs.default_formats)",
    )  # fmt: skip
    parser.add_argument("-o", "--output-dir", type=Path, default=Path("."), help="where to write files (default: .)")
    parser.add_argument("--num-speakers", type=int, default=None, metavar="N", help="known number of speakers")
    parser.add_argument("--min-speakers", type=int, default=None, metavar="N", help="at least N speakers (a range)")
    parser.add_argument("--max-speakers", type=int, default=None, metavar="N", help="at most N speakers (a range)")
    parser.add_argument(
        "--channels", choices=("auto", "mix", "split"), default="auto",
        help="multichannel audio: split (each channel on its own, speaker = channel), mix, or auto (default)",
    )  # fmt: skip
    parser.add_argument(
        "--hotword", action="append", default=[], metavar="WORD", help="boost a word or phrase (repeatable)"
    )
    parser.add_argument("--no-diarize", action="store_true", help="skip speaker diarization")
    parser.add_argument("--language", default=None, help="language hint, for models that take one")


def run(args: argparse.Namespace) -> int:
    from funasr_fleet.settings import load_settings

    settings = load_settings()  # ConfigError -> exit 78 in cli.main
    from funasr_fleet.engine.threads import configure_threads

    configure_threads(settings.engine.threads)  # before torch is imported
    from funasr_fleet.logs import setup_logging

    setup_logging(settings.log.level, settings.log.format)
    formats: list[str] = args.formats or list(settings.outputs.default_formats)

    from pydantic import ValidationError

    from funasr_fleet.errors import ModelLoadError
    from funasr_fleet.jobs import JobOptions, describe_errors

    try:  # the same rules as a job's options (speaker counts 1..32, exact count or range)
        job_options = JobOptions(
            hotwords=[h.strip() for h in args.hotword if h.strip()],
            diarize=not args.no_diarize,
            num_speakers=args.num_speakers,
            min_speakers=args.min_speakers,
            max_speakers=args.max_speakers,
            language=args.language,
            channels=args.channels,
        )
    except ValidationError as exc:
        print(f"funasr-fleet transcribe: invalid options: {describe_errors(exc, root='speakers')}", file=sys.stderr)
        return 2
    options = job_options.transcribe_options()
    try:
        from funasr_fleet.engine.pipeline import Engine

        engine = Engine(settings.engine)
    except ModelLoadError as exc:
        print(f"funasr-fleet transcribe: {exc.code}: {exc}", file=sys.stderr)
        return EXIT_MODEL_LOAD
    return transcribe_files(engine, args.files, args.output_dir, formats, options)


def transcribe_files(engine: object, files: list[Path], out_dir: Path, formats: list[str], options: object) -> int:
    """Transcribe each file with ``engine``; print progress and errors to stderr; return the exit code."""
    from funasr_fleet.engine.pipeline import Engine
    from funasr_fleet.engine.transcript import TranscribeOptions
    from funasr_fleet.errors import FleetError
    from funasr_fleet.outputs import OutputMeta, write_file

    assert isinstance(engine, Engine) and isinstance(options, TranscribeOptions)
    total = len(files)
    failed = 0
    used_stems: dict[str, int] = {}
    started = time.perf_counter()
    for index, path in enumerate(files, 1):
        prefix = f"[{index}/{total}] {path}"
        if total > 1:
            print(f"{prefix} ...", file=sys.stderr, flush=True)
        try:
            with engine.load_audio(path) as audio:  # closing deletes the staged samples
                transcript = engine.transcribe(audio, options)
            stem = _unique_stem(path.stem, used_stems)
            meta = OutputMeta(source=str(path), audio=audio.info.as_dict())
            written = [write_file(fmt, transcript, meta, out_dir / f"{stem}.{fmt}") for fmt in formats]
        except FleetError as exc:
            failed += 1
            print(f"{prefix}: FAILED {exc.code}: {exc}", file=sys.stderr, flush=True)
            continue
        except OSError as exc:
            failed += 1
            print(f"{prefix}: FAILED io_error: {exc}", file=sys.stderr, flush=True)
            continue
        except Exception as exc:  # noqa: BLE001 - one bad file must not lose the others' results
            failed += 1
            print(f"{prefix}: FAILED internal_error: {exc.__class__.__name__}: {exc}", file=sys.stderr, flush=True)
            continue
        print(
            f"{prefix}: ok {audio.duration_s:.1f} s audio, {len(transcript.sentences)} sentences, "
            f"{len(transcript.speakers)} speaker(s), {transcript.wall_s:.2f} s "
            f"(RTF {transcript.real_time_factor:.3f}) -> {', '.join(str(p) for p in written)}",
            file=sys.stderr,
            flush=True,
        )
        for warning in transcript.warnings:  # the transcript is usable: a warning is not a failure
            print(f"{prefix}: warning {warning.code}: {warning.message}", file=sys.stderr, flush=True)
    if total > 1:
        print(
            f"done: {total - failed} ok, {failed} failed, {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    return EXIT_FILE_FAILED if failed else 0


def _unique_stem(stem: str, used: dict[str, int]) -> str:
    """Two inputs with one stem (a/x.wav, b/x.mp3) must not overwrite each other's outputs."""
    count = used.get(stem, 0) + 1
    used[stem] = count
    return stem if count == 1 else f"{stem}-{count}"
