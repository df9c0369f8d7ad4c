"""Print the configuration reference (Markdown) generated from the Settings model."""

from __future__ import annotations

import argparse

HELP = "print the configuration reference generated from the Settings model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--toml", action="store_true", help="print the example TOML file instead of Markdown")


def run(args: argparse.Namespace) -> int:
    from funasr_fleet.config_reference import render, render_toml

    print(render_toml() if args.toml else render(), end="")
    return 0
