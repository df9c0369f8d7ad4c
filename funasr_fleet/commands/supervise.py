"""`funasr-fleet supervise`: the fleet's main process (PID 1 in a container)."""

from __future__ import annotations

import argparse
import shlex

HELP = "run N consumer processes: restart crashed/hung ones, drain on SIGTERM, serve /healthz /readyz /metrics"


def _consumers(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a positive integer or 'auto'") from None
    if number < 1:
        raise argparse.ArgumentTypeError("expected a positive integer or 'auto'")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--consumers",
        type=_consumers,
        default=None,
        metavar="N|auto",
        help="consumer processes (default: supervisor.consumers; auto = usable cores // threads)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="T",
        help="torch/OpenMP threads per consumer (default: supervisor.threads_per_consumer, else cores // consumers)",
    )
    parser.add_argument("--http-host", default=None, help="bind address of the endpoints (supervisor.http_host)")
    parser.add_argument(
        "--http-port", type=int, default=None, help="port of the endpoints, 0 = off (supervisor.http_port)"
    )
    parser.add_argument(
        "--grace-period",
        type=float,
        default=None,
        metavar="SECONDS",
        help="on SIGTERM, wait this long for running jobs (supervisor.grace_period_s)",
    )
    parser.add_argument(
        "--preload",
        choices=("none", "fork"),
        default=None,
        help="fork = load the model once and fork consumers from it (shared weights, CPU only) (supervisor.preload)",
    )
    parser.add_argument(
        "--consumer-command",
        default=None,
        metavar="CMD",
        help="advanced: command that starts one consumer (default: this python -m funasr_fleet consume)",
    )


def run(args: argparse.Namespace) -> int:
    from funasr_fleet.errors import ConfigError
    from funasr_fleet.logs import get_logger, setup_logging
    from funasr_fleet.settings import SupervisorSettings, load_settings, usable_cores
    from funasr_fleet.supervisor.arbiter import Arbiter
    from funasr_fleet.supervisor.http import HealthServer
    from funasr_fleet.supervisor.policy import plan_threads

    settings = load_settings()
    setup_logging(settings.log.level, settings.log.format)
    log = get_logger("supervisor")
    update = {
        key: value
        for key, value in {
            "consumers": args.consumers,
            "threads_per_consumer": args.threads,
            "http_host": args.http_host,
            "http_port": args.http_port,
            "grace_period_s": args.grace_period,
            "preload": args.preload,
        }.items()
        if value is not None
    }
    if update:
        try:
            sup = SupervisorSettings.model_validate({**settings.supervisor.model_dump(), **update})
        except ValueError as exc:
            raise ConfigError(f"invalid supervisor option: {exc}") from None
        settings = settings.model_copy(update={"supervisor": sup})
    sup = settings.supervisor
    cores = usable_cores()
    gpu = settings.engine.device.startswith("cuda")
    plan = plan_threads(sup.consumers, sup.threads_per_consumer, cores, gpu=gpu)
    if gpu and sup.consumers == "auto":
        log.info("engine on CUDA: consumers=auto starts one consumer; use --consumers N to share the GPU")
    if plan.oversubscribed:
        log.warning(
            "oversubscribed: consumers x threads exceeds usable cores; expect much slower inference",
            consumers=plan.consumers,
            threads=plan.threads,
            usable_cores=cores,
        )
    if sup.preload == "fork" and gpu:
        raise ConfigError(
            f"supervisor.preload = fork is CPU only (engine.device = {settings.engine.device}): "
            "CUDA cannot be used in a forked process; use preload = none"
        )
    if sup.preload == "fork" and args.consumer_command:
        raise ConfigError("--consumer-command cannot be used with supervisor.preload = fork (consumers are forks)")
    command = shlex.split(args.consumer_command) if args.consumer_command else None
    arbiter = Arbiter(settings, plan, consumer_command=command)
    server = None
    try:
        if sup.http_port:
            try:
                server = HealthServer(arbiter, sup.http_host, sup.http_port).start()
            except OSError as exc:
                raise ConfigError(f"cannot listen on {sup.http_host}:{sup.http_port}: {exc}") from None
        return arbiter.run()
    finally:
        if server is not None:
            server.stop()
        arbiter.cleanup()
