"""The wire between the supervisor and the zygote of ``supervisor.preload = "fork"`` (both sides).

An AF_UNIX SOCK_SEQPACKET pair (message boundaries kept, file descriptors can travel); the
zygote's end is inherited as the fd named in :data:`ZYGOTE_FD_ENV`. One exchange per consumer:

- request (supervisor → zygote): ``{"op": "spawn", "env": {name: value}}`` with exactly one file
  descriptor attached (SCM_RIGHTS): the write end of the new consumer's stderr pipe;
- reply (zygote → supervisor): ``{"pid": N}``, or ``{"error": "...", "replace": bool}`` where
  ``replace`` means the zygote is of no further use (e.g. it has more than one thread).

The zygote side lives in consumer/zygote.py, the supervisor side in supervisor/spawn.py; neither
imports the other, and this module imports neither the engine nor pika.
"""

from __future__ import annotations

import json
import os
import select
import socket
from typing import Any

from funasr_fleet.errors import SpawnError

ZYGOTE_FD_ENV = "FLEET_ZYGOTE_FD"
"""The zygote's end of the socket pair (an inherited file descriptor number)."""
MAX_MESSAGE = 64 * 1024
SPAWN_OP = "spawn"

Reply = dict[str, Any]


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """(supervisor end, zygote end); the zygote's end is inheritable."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.set_inheritable(True)
    return ours, theirs


# --- supervisor side ----------------------------------------------------------------------------
def request_spawn(sock: socket.socket, env: dict[str, str], timeout_s: float) -> tuple[int, int]:
    """Ask the zygote for one consumer with ``env`` applied; returns (pid, read end of its stderr pipe).

    Raises SpawnError (``zygote_unresponsive`` when the zygote is silent for ``timeout_s`` seconds,
    gone, or asks to be replaced).
    """
    read_fd, write_fd = os.pipe()
    try:
        try:
            socket.send_fds(sock, [json.dumps({"op": SPAWN_OP, "env": env}).encode()], [write_fd])
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
        reply: Reply = json.loads(data)
        if "pid" not in reply:
            raise SpawnError(str(reply.get("error") or reply), zygote_unresponsive=bool(reply.get("replace")))
        return int(reply["pid"]), read_fd
    except BaseException:
        os.close(read_fd)
        raise


# --- zygote side --------------------------------------------------------------------------------
def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """The next request and its file descriptors (the caller closes them); None once the supervisor
    closed its end. Raises OSError from the socket and ValueError for a body that is not JSON."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 1)
    if not data:
        return None
    return json.loads(data), fds


def spawn_env(request: dict[str, Any], fds: list[int]) -> dict[str, str]:
    """The environment a spawn request asks for; ValueError for anything but a spawn with one fd."""
    if request.get("op") != SPAWN_OP or len(fds) != 1:
        raise ValueError(f"bad request {request.get('op')!r} with {len(fds)} fds")
    return {str(k): str(v) for k, v in dict(request.get("env") or {}).items()}


def pid_reply(pid: int) -> Reply:
    return {"pid": pid}


def error_reply(message: str, *, replace: bool = False) -> Reply:
    """``replace``: the zygote cannot serve any further request; the supervisor replaces it."""
    return {"error": message, "replace": True} if replace else {"error": message}


def send_reply(sock: socket.socket, reply: Reply) -> None:
    """Raises OSError when the supervisor is gone."""
    sock.send(json.dumps(reply).encode())
