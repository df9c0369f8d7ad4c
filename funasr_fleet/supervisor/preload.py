"""The supervisor's side of ``supervisor.preload = "fork"`` (the zygote: consumer/zygote.py).

The zygote is started like a consumer (a fresh interpreter, its own heartbeat file) with one end
of a socket pair; the supervisor asks it for consumers over that socket. The zygote double-forks,
so each consumer is re-parented to the supervisor, which must therefore be a child subreaper:
then it reaps, watches, restarts and drains forked consumers exactly like exec'd ones. No engine
import here: only sockets, pipes and prctl.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import socket
import sys
from typing import Any

ZYGOTE_FD_ENV = "FLEET_ZYGOTE_FD"  # the zygote's end of the socket pair
MAX_MESSAGE = 64 * 1024
_PR_SET_CHILD_SUBREAPER = 36


class SpawnError(Exception):
    """The zygote could not fork a consumer (it answered an error, or nothing in time).

    ``zygote_unresponsive``: the zygote is of no further use (silent, gone, or unsafe to fork):
    the supervisor replaces it.
    """

    def __init__(self, message: str, *, zygote_unresponsive: bool = False) -> None:
        super().__init__(message)
        self.zygote_unresponsive = zygote_unresponsive


def zygote_command() -> list[str]:
    return [sys.executable, "-m", "funasr_fleet", "consume", "--zygote"]


def become_subreaper() -> bool:
    """Adopt orphaned descendants (the zygote's grandchildren) so ``waitpid`` sees them."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return False


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """(supervisor end, zygote end): message boundaries kept, file descriptors can travel."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.set_inheritable(True)
    return ours, theirs


def request_spawn(sock: socket.socket, env: dict[str, str], timeout_s: float) -> tuple[int, int]:
    """Ask the zygote for one consumer; returns (pid, read end of its stderr pipe)."""
    read_fd, write_fd = os.pipe()
    try:
        try:
            socket.send_fds(sock, [json.dumps({"op": "spawn", "env": env}).encode()], [write_fd])
        except OSError as exc:
            raise SpawnError(f"zygote socket: {exc}", zygote_unresponsive=True) from None
        finally:
            os.close(write_fd)
        readable, _, _ = select.select([sock], [], [], timeout_s)
        if not readable:
            raise SpawnError(f"zygote did not answer within {timeout_s:.0f} s", zygote_unresponsive=True)
        try:
            data = sock.recv(MAX_MESSAGE)
        except OSError as exc:
            raise SpawnError(f"zygote socket: {exc}", zygote_unresponsive=True) from None
        if not data:
            raise SpawnError("zygote closed its socket", zygote_unresponsive=True)
        reply: dict[str, Any] = json.loads(data)
        if "pid" not in reply:
            raise SpawnError(str(reply.get("error") or reply), zygote_unresponsive=bool(reply.get("replace")))
        return int(reply["pid"]), read_fd
    except BaseException:
        os.close(read_fd)
        raise
