"""Boot one consumer process and run it until it should stop; returns the exit code.

Order matters: settings (bad → 78), thread limits BEFORE torch is imported, the model (slow;
a side thread beats ``booting`` meanwhile), storage, then the broker (topology declared). Any
boot failure is written into the heartbeat JSON (``error``) and to stderr, exit 3, so the
supervisor can name the cause. Signals: first SIGTERM/SIGINT drains (finish the job, exit 0),
second abandons the job (nack requeue) and exits.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog

from funasr_fleet import exitcodes
from funasr_fleet.consumer.loop import ConsumerLoop
from funasr_fleet.errors import ConfigError, FleetError
from funasr_fleet.heartbeat import BeatState, BootBeater, Heartbeat
from funasr_fleet.settings import Settings, load_settings

if TYPE_CHECKING:
    from funasr_fleet.engine.pipeline import Engine

SUPERVISOR_PID_ENV = "FLEET_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1

log = structlog.get_logger("funasr_fleet.consumer.main")


def consumer_id(settings: Settings) -> str:
    """``consumer.id`` (the supervisor sets ``<host>-c<slot>``), else ``<hostname>:<pid>``."""
    return settings.consumer.id or f"{socket.gethostname()}:{os.getpid()}"


def supervisor_pid_from_env() -> int | None:
    """The supervisor's pid from ``FLEET_SUPERVISOR_PID``; None when unset or unreadable (run by hand)."""
    raw = os.environ.get(SUPERVISOR_PID_ENV)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def die_with_parent() -> None:
    """Linux: SIGTERM when the parent dies (the loop also polls getppid, and exits 5)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def boot_failed(hb: Heartbeat, message: str, code: int) -> int:
    """Report a failed boot on stderr and in the heartbeat's ``error`` (the supervisor's halt message
    names it); returns ``code`` (exitcodes.CONFIG or BOOT_FAILURE) for the caller to exit with."""
    print(f"funasr-fleet consume: boot failed: {message}", file=sys.stderr, flush=True)
    with contextlib.suppress(OSError):
        hb.write(BeatState.BOOTING, error=message)
    log.error("boot failed", error=message, exit_code=code)
    return code


def run_consumer(
    settings: Settings | None = None,
    *,
    max_jobs: int | None = None,
    on_loop: Callable[[ConsumerLoop], None] | None = None,
    before_connect: Callable[[], None] | None = None,
    engine: Engine | None = None,
) -> int:
    """Run one consumer in this process. ``max_jobs``: stop after that many; ``on_loop`` gets the
    loop before boot (in-process tests stop it with ``loop.request_stop()``); ``before_connect``
    runs after the model loaded, just before the broker connection (tests tune the broker there);
    ``engine``: one already loaded (a consumer forked from the zygote, consumer/zygote.py).
    """
    from funasr_fleet.logs import setup_logging

    if settings is None:
        try:
            settings = load_settings()
        except ConfigError as exc:
            hb_path = os.environ.get("FLEET_CONSUMER__HEARTBEAT_FILE")
            from pathlib import Path

            return boot_failed(Heartbeat(Path(hb_path) if hb_path else None), exc.message, exitcodes.CONFIG)
    setup_logging(settings.log.level, settings.log.format)
    cid = consumer_id(settings)
    structlog.contextvars.bind_contextvars(consumer=cid)
    hb = Heartbeat(settings.consumer.heartbeat_file)
    supervisor_pid = supervisor_pid_from_env()
    if supervisor_pid is not None:
        # The supervisor sends SIGABRT to a hung consumer: print every thread's stack first, so
        # the log says where it hung (inference? a socket?) before the SIGKILL.
        faulthandler.enable(all_threads=True)
        die_with_parent()
        if os.getppid() != supervisor_pid:
            return exitcodes.ORPHANED

    loop = ConsumerLoop(settings, runner=_not_ready, on_timeout=_not_ready, heartbeat=hb, supervisor_pid=supervisor_pid)
    loop.max_jobs = max_jobs
    if on_loop is not None:
        on_loop(loop)
    on_main = threading.current_thread() is threading.main_thread()
    previous: dict[signal.Signals, signal.Handlers | Callable[[int, FrameType | None], Any] | int | None] = {}
    if on_main:

        def _on_signal(signum: int, frame: FrameType | None) -> None:
            loop.request_stop()
            log.info("stop requested", signal=signal.Signals(signum).name, count=loop.stops.count)

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _on_signal)

    error: tuple[str, int] | None = None
    with BootBeater(hb):
        try:
            from funasr_fleet.engine.threads import configure_threads

            threads = configure_threads(settings.engine.threads)  # before anything imports torch
            from funasr_fleet import events
            from funasr_fleet.consumer.handler import JobHandler
            from funasr_fleet.engine.pipeline import Engine
            from funasr_fleet.storage import Storage

            preloaded = engine is not None
            if engine is None:
                engine = Engine(settings.engine)
            else:
                engine.threads = threads  # forked from the one-thread zygote: this process's count
            storage = Storage(settings.s3)
            handler = JobHandler(settings, engine, storage, events.default_source(cid))
            loop.runner, loop.on_timeout = handler, handler.on_timeout
            handler.wire(loop)
            if before_connect is not None:
                before_connect()
            loop.connect_for_boot()
        except ConfigError as exc:
            error = (exc.message, exitcodes.CONFIG)
        except FleetError as exc:
            error = (f"{exc.code}: {exc.message}", exitcodes.BOOT_FAILURE)
        except Exception as exc:  # noqa: BLE001 - any boot failure is reported, not raised
            error = (f"{type(exc).__name__}: {exc}", exitcodes.BOOT_FAILURE)
    if error is not None:
        return boot_failed(hb, *error)
    assert engine is not None  # loaded above, or the boot failed

    log.info(
        "consumer booted",
        fingerprint=engine.identity.fingerprint[:16],
        queue=settings.amqp.jobs_queue,
        threads=engine.threads,
        preloaded=preloaded,
    )
    try:
        code = loop.run()
    finally:
        if on_main:
            for sig, handler_ in previous.items():
                signal.signal(sig, handler_)
    with contextlib.suppress(OSError):
        hb.write(BeatState.DRAINING)
    log.info("consumer exiting", exit_code=code, jobs_done=loop.jobs_done)
    return code


def _not_ready(*_: object) -> None:  # pragma: no cover - replaced before the loop runs
    raise RuntimeError("consumer not booted")


__all__ = ["consumer_id", "run_consumer"]
