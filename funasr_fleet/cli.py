"""`funasr-fleet` command line: a thin dispatcher.

Each subcommand lives in ``funasr_fleet/commands/<name>.py`` with ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``. Command modules keep heavy imports (torch, funasr, pika, boto3) inside
``run`` so `--help` and the supervisor stay light.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from funasr_fleet import __version__
from funasr_fleet.errors import ConfigError

COMMANDS: dict[str, str] = {
    "transcribe": "funasr_fleet.commands.transcribe",
    "consume": "funasr_fleet.commands.consume",
    "supervise": "funasr_fleet.commands.supervise",
    "submit": "funasr_fleet.commands.submit",
    "status": "funasr_fleet.commands.status",
    "cancel": "funasr_fleet.commands.cancel",
    "announce": "funasr_fleet.commands.announce",
    "notify": "funasr_fleet.commands.notify",
    "sweep": "funasr_fleet.commands.sweep",
    "topology": "funasr_fleet.commands.topology",
    "dlq": "funasr_fleet.commands.dlq",
    "dev": "funasr_fleet.commands.dev",
    "config-reference": "funasr_fleet.commands.config_reference",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="funasr-fleet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"funasr-fleet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # not built yet
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ConfigError as exc:
        print(f"funasr-fleet: {exc}", file=sys.stderr)
        return 78  # EX_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
