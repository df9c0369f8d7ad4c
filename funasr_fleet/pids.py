"""Is a process alive? (used for pidfiles, staging dirs and state dirs left by dead processes)."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int, *, reap: bool = False) -> bool:
    """True while ``pid`` exists and is not a zombie.

    ``reap=True`` also reaps it when it is a finished child of ours; callers that collect their
    children's exit status themselves (the supervisor) must leave it False.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    if reap:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return False
        except ChildProcessError:
            pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
