"""Starting children: fresh interpreters (``Popen``), or forks asked of the zygote; their stderr pumps.

Consumers are fresh interpreters (``python -m funasr_fleet consume``), never forks of the
supervisor: forking after imports is unsafe with CUDA and threads. With ``supervisor.preload =
"fork"`` they are forks of the zygote instead (consumer/zygote.py, a fresh interpreter itself),
re-parented to the supervisor, which is therefore a child subreaper. Every child runs in its own
process group, so a terminal's Ctrl-C reaches only the supervisor, which then drains them once (a
second signal would make a consumer abandon its job). No engine import here.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from funasr_fleet import metrics, zygote_protocol
from funasr_fleet.settings import Settings
from funasr_fleet.supervisor.child import ZYGOTE, Child
from funasr_fleet.supervisor.policy import ThreadPlan

SPAWN_TIMEOUT_S = 10.0
"""A zygote that does not answer a spawn request in this time is replaced."""
_PR_SET_CHILD_SUBREAPER = 36
_STDERR_LOCK = threading.Lock()  # one child's line at a time on our stderr


def default_consumer_command() -> list[str]:
    return [sys.executable, "-m", "funasr_fleet", "consume"]


def zygote_command() -> list[str]:
    return [sys.executable, "-m", "funasr_fleet", "consume", "--zygote"]


def become_subreaper() -> bool:
    """Adopt orphaned descendants (the zygote's grandchildren) so ``waitpid`` sees them; False off Linux."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return False


@dataclass(frozen=True)
class Started:
    pid: int
    stderr: IO[bytes]
    sock: socket.socket | None = None  # the zygote's end of its socket pair is kept here
    process: subprocess.Popen[bytes] | None = None  # exec'd children: kept until reaped (Child.process)


class Spawner:
    """Starts the child of a slot: env overrides, exec or fork, heartbeat file, stderr pump.

    ``command``: how a consumer is exec'd (``--consumer-command``); ``run_dir``: this run's
    directory (heartbeats/, metrics/).
    """

    def __init__(self, settings: Settings, plan: ThreadPlan, command: list[str], run_dir: Path) -> None:
        self.settings = settings
        self.plan = plan
        self.command = command
        self.run_dir = run_dir
        self.hb_dir = run_dir / "heartbeats"
        self.hb_dir.mkdir(parents=True, exist_ok=True)
        self.preload = settings.supervisor.preload == "fork"

    def start(self, slot: int, generation: int, zygote: Child | None) -> Child:
        """Start ``slot``'s child. ``zygote``: the ready zygote that forks consumers (preload = fork).

        Raises SpawnError (the zygote did not fork), FileNotFoundError/PermissionError (the command
        is wrong) or another OSError (fork/exec failed: EAGAIN, ENOMEM).
        """
        name = f"zygote.{generation}.json" if slot == ZYGOTE else f"consumer-{slot}.{generation}.json"
        hb_path = self.hb_dir / name
        env = self.child_env(slot, hb_path)
        if slot != ZYGOTE and self.preload:
            assert zygote is not None and zygote.sock is not None, "spawn without a ready zygote"
            started = self.fork_consumer(zygote.sock, env)
        else:
            started = self.exec_child(slot, env)
        child = Child(
            slot=slot,
            generation=generation,
            pid=started.pid,
            hb_path=hb_path,
            started_mono=time.monotonic(),
            last_beat_wall=time.time(),
            sock=started.sock,
            process=started.process,
        )
        child.reader = threading.Thread(
            target=pump_stderr, args=(started.stderr, child.stderr_tail), name=f"stderr-{child.pid}", daemon=True
        )
        child.reader.start()
        return child

    def child_env(self, slot: int, hb_path: Path) -> dict[str, str]:
        """What a child's environment sets on top of the supervisor's (forked children get only this)."""
        # the zygote loads with one thread: an OpenMP pool started before fork deadlocks children
        threads = "1" if slot == ZYGOTE else str(self.plan.threads)
        base_id = self.settings.consumer.id or socket.gethostname()
        env = {
            "FLEET_CONSUMER__HEARTBEAT_FILE": str(hb_path),
            "FLEET_ENGINE__THREADS": threads,
            "FLEET_CONSUMER__ID": f"{base_id}-zygote" if slot == ZYGOTE else f"{base_id}-c{slot}",
            "FLEET_SUPERVISOR_PID": str(os.getpid()),
            metrics.MULTIPROC_ENV: str(self.run_dir / "metrics"),
        }
        # OpenMP/BLAS read these at library load: the plan wins over inherited values (the
        # engine's configure_threads sets the same from FLEET_ENGINE__THREADS).
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = threads
        # spinning threads stall the other consumers
        env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
        return env

    def fork_consumer(self, zygote_sock: socket.socket, env: dict[str, str]) -> Started:
        """A consumer forked by the ready zygote. Raises SpawnError."""
        pid, stderr_fd = zygote_protocol.request_spawn(zygote_sock, env, SPAWN_TIMEOUT_S)
        return Started(pid, os.fdopen(stderr_fd, "rb"))

    def exec_child(self, slot: int, env: dict[str, str]) -> Started:
        """A fresh interpreter: a consumer, or the zygote (then with its end of a socket pair)."""
        command: list[str] = self.command
        pass_fds: tuple[int, ...] = ()
        sock = theirs = None
        if slot == ZYGOTE:
            sock, theirs = zygote_protocol.socket_pair()
            command, pass_fds = zygote_command(), (theirs.fileno(),)
            env = {**env, zygote_protocol.ZYGOTE_FD_ENV: str(theirs.fileno())}
        try:
            popen = subprocess.Popen(
                command,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                close_fds=True,
                pass_fds=pass_fds,
                process_group=0,
            )
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        finally:
            if theirs is not None:
                theirs.close()
        assert popen.stderr is not None
        return Started(popen.pid, popen.stderr, sock, popen)


def pump_stderr(stream: IO[bytes], tail: deque[str]) -> None:
    """Forward a child's stderr line by line to ours, keeping the last lines for failure messages."""
    out = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
    try:
        for raw in iter(stream.readline, b""):
            tail.append(raw.decode("utf-8", "replace").rstrip("\n"))
            if out is not None:
                with _STDERR_LOCK:
                    try:
                        out.write(raw)
                        out.flush()
                    except (OSError, ValueError):
                        pass
    finally:
        stream.close()
