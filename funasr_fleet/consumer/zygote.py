"""The zygote of ``supervisor.preload = "fork"``: load the engine once, fork consumers from it.

Why: every consumer otherwise holds its own copy of the model weights. Forked children share the
zygote's pages copy-on-write (weights are read, never written), so each extra consumer costs only
its private memory, and a crashed consumer is back in milliseconds instead of reloading the model.

Why it is safe only like this (measured, benchmarks/memory.py): a process that ran OpenMP-parallel
inference and then forks leaves children whose first parallel region deadlocks (the OpenMP pool
does not survive fork). So the zygote is a fresh interpreter that loads the model with ONE thread
and NEVER runs inference; before every fork it checks that it has exactly one OS thread. Each
child then sets its own thread count, opens its own broker and S3 connections and runs the normal
consumer loop. CPU only: CUDA cannot be used in a forked child.

Protocol (zygote_protocol.py): the supervisor asks for a consumer with its environment and the
write end of its stderr pipe; the zygote double-forks so the consumer is re-parented to the
supervisor (a child subreaper), which reaps and watches it like any consumer, and answers its pid.
Liveness and readiness go through the same heartbeat file as a consumer's (``ready`` once loaded).
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import os
import select
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import structlog

from funasr_fleet import exitcodes
from funasr_fleet.consumer.main import SUPERVISOR_PID_ENV, boot_failed, die_with_parent, supervisor_pid_from_env
from funasr_fleet.errors import ConfigError, FleetError
from funasr_fleet.heartbeat import BeatState, BootBeater, Heartbeat
from funasr_fleet.settings import load_settings
from funasr_fleet.zygote_protocol import (
    ZYGOTE_FD_ENV,
    Reply,
    error_reply,
    pid_reply,
    receive,
    send_reply,
    spawn_env,
)

BEAT_S = 0.5
REPARENT_TIMEOUT_S = 10.0

log = structlog.get_logger("funasr_fleet.consumer.zygote")


def os_threads() -> int:
    """Threads of this process as the kernel sees them (OpenMP/BLAS threads included)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover - not Linux
        return 1


def run_zygote() -> int:
    """Boot (settings, one-thread engine), then serve spawn requests until EOF or SIGTERM."""
    from funasr_fleet.logs import setup_logging

    hb_env = os.environ.get("FLEET_CONSUMER__HEARTBEAT_FILE")
    hb = Heartbeat(Path(hb_env) if hb_env else None)
    try:
        settings = load_settings()
    except ConfigError as exc:
        return boot_failed(hb, exc.message, exitcodes.CONFIG)
    setup_logging(settings.log.level, settings.log.format)
    structlog.contextvars.bind_contextvars(consumer=settings.consumer.id or "zygote")
    try:
        sock = socket.socket(fileno=int(os.environ[ZYGOTE_FD_ENV]))
    except (KeyError, ValueError, OSError) as exc:
        return boot_failed(hb, f"zygote: no supervisor socket ({ZYGOTE_FD_ENV}): {exc}", exitcodes.CONFIG)
    supervisor_pid = supervisor_pid_from_env()
    if supervisor_pid is None:
        return boot_failed(hb, f"zygote: {SUPERVISOR_PID_ENV} is not set", exitcodes.CONFIG)
    faulthandler.enable(all_threads=True)  # SIGABRT from the supervisor's hung check prints where
    die_with_parent()
    if os.getppid() != supervisor_pid:
        return exitcodes.ORPHANED

    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.append(signum))

    error: tuple[str, int] | None = None
    engine: Any = None
    with BootBeater(hb):  # its thread ends before the first fork (checked below)
        try:
            if settings.engine.device.startswith("cuda"):
                raise ConfigError("supervisor.preload = fork is CPU only: CUDA cannot be used in a forked process")
            from funasr_fleet.engine.threads import configure_threads

            configure_threads(1)  # one thread: OpenMP never starts a pool the children would inherit
            from funasr_fleet.engine.pipeline import Engine

            engine = Engine(settings.engine.model_copy(update={"threads": 1}))
            # what every consumer imports next (pika, boto3, the handler): shared too, and a fork
            # boots faster; imports only, no connection is opened before the fork
            import funasr_fleet.consumer.handler
            import funasr_fleet.storage  # noqa: F401
        except ConfigError as exc:
            error = (exc.message, exitcodes.CONFIG)
        except FleetError as exc:
            error = (f"{exc.code}: {exc.message}", exitcodes.BOOT_FAILURE)
        except Exception as exc:  # noqa: BLE001 - any boot failure is reported, not raised
            error = (f"{type(exc).__name__}: {exc}", exitcodes.BOOT_FAILURE)
    if error is None:
        threads = _settle_threads()
        if threads != 1:
            error = (
                f"zygote has {threads} threads after loading the model: forking it would be unsafe; "
                "use supervisor.preload = none",
                exitcodes.BOOT_FAILURE,
            )
    if error is not None:
        return boot_failed(hb, *error)

    # Objects that exist now are never collected: the collector would otherwise touch (and so
    # copy) every page holding them in every child.
    gc.collect()
    gc.freeze()
    hb.write(BeatState.READY)
    log.info(
        "model preloaded: forking consumers on request",
        fingerprint=engine.identity.fingerprint[:16],
        load_s=round(engine.load_s, 3),
    )
    while not stop:
        try:
            readable, _, _ = select.select([sock], [], [], BEAT_S)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            readable = []
        hb.maybe_write(BeatState.READY, every_s=BEAT_S)
        if os.getppid() != supervisor_pid:
            log.warning("supervisor gone: zygote exiting")
            return exitcodes.ORPHANED
        if not readable or stop:
            continue
        try:
            received = receive(sock)
        except OSError:
            return exitcodes.OK
        if received is None:
            return exitcodes.OK  # the supervisor closed its end
        request, fds = received
        try:
            reply = _spawn(request, fds, sock, engine)
        finally:
            for fd in fds:
                _close(fd)
        try:
            send_reply(sock, reply)
        except OSError:
            return exitcodes.OK
    log.info("zygote stopping")
    return exitcodes.OK


def _settle_threads(timeout_s: float = 5.0) -> int:
    """The OS thread count once the boot beater's thread has ended (it is joined, but may lag)."""
    deadline = time.monotonic() + timeout_s
    while (threads := os_threads()) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    return threads


def _spawn(request: dict[str, Any], fds: list[int], sock: socket.socket, engine: Any) -> Reply:
    """Double-fork one consumer; returns the pid reply or an error reply (zygote_protocol.py)."""
    try:
        env = spawn_env(request, fds)
    except ValueError as exc:
        return error_reply(str(exc))
    threads = os_threads()
    if threads != 1:
        # Forking a multi-threaded process copies locks held by threads that do not exist in
        # the child: refuse rather than hand out consumers that may deadlock.
        return error_reply(f"zygote has {threads} threads; forking it would be unsafe", replace=True)
    pid_r, pid_w = os.pipe()
    middle = os.fork()
    if middle == 0:  # the intermediate: fork the consumer, report its pid, exit (re-parenting it)
        code = 0
        try:
            os.close(pid_r)
            pid = os.fork()
            if pid == 0:
                os.close(pid_w)
                _become_consumer(env, fds[0], sock, engine)  # never returns
            os.write(pid_w, str(pid).encode())
        except BaseException:  # noqa: BLE001 - must never return into the zygote's loop
            code = 1
        finally:
            os._exit(code)
    os.close(pid_w)
    raw = b""
    try:
        while chunk := os.read(pid_r, 64):
            raw += chunk
    finally:
        os.close(pid_r)
        os.waitpid(middle, 0)
    if not raw:
        return error_reply("fork failed in the intermediate process")
    return pid_reply(int(raw))


def _become_consumer(env: dict[str, str], stderr_fd: int, sock: socket.socket, engine: Any) -> None:
    code = exitcodes.CRASH
    try:
        os.setpgid(0, 0)  # like the supervisor's other children: a terminal's Ctrl-C is not ours
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        sock.close()
        os.dup2(stderr_fd, 2)
        _close(stderr_fd)
        os.environ.update(env)
        supervisor_pid = supervisor_pid_from_env()
        deadline = time.monotonic() + REPARENT_TIMEOUT_S
        while supervisor_pid is not None and os.getppid() != supervisor_pid and time.monotonic() < deadline:
            time.sleep(0.002)  # the intermediate is exiting; the supervisor (subreaper) adopts us
        import numpy as np

        np.random.seed()  # a fresh interpreter would have its own; Python's random reseeds itself
        from funasr_fleet.consumer.main import run_consumer

        code = run_consumer(engine=engine)
    except BaseException:  # noqa: BLE001 - report, then exit with a code the supervisor classifies
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
