"""Print the configuration reference (Markdown) generated from the Settings model."""

from __future__ import annotations

import argparse

HELP = "print the configuration reference generated from the Settings model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from funasr_fleet.config_reference import render

    print(render(), end="")
    return 0
