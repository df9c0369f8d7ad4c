"""After a child is reaped: collect what it left (socket, stderr, last heartbeat), classify and log its death.

The arbiter decides what follows (replace the slot or halt, by supervisor/policy.py); this module only
settles the dead child and writes the one log line that says why it died.
"""

from __future__ import annotations

from typing import Any

from funasr_fleet.logs import get_logger
from funasr_fleet.supervisor.child import Child
from funasr_fleet.supervisor.policy import Cause, Death, classify
from funasr_fleet.supervisor.watch import read_beat

log = get_logger("supervisor")

QUIET_CAUSES = (Cause.STOPPED, Cause.CLEAN)
"""Deaths logged at info without the child's last stderr lines."""


def settle(child: Child, status: int) -> Death:
    """Close the reaped child's socket, let its last stderr lines arrive, read its last heartbeat
    (a boot error written just before exit) and classify its ``waitpid`` ``status``."""
    if child.sock is not None:
        child.sock.close()
    if child.reader is not None:
        child.reader.join(timeout=1.0)  # let the last stderr lines arrive
    read_beat(child)  # a boot error written just before exit
    return classify(
        child.pid, status, was_ready=child.was_ready, stop_requested=child.stop_requested, hung_killed=child.hung
    )


def log_death(child: Child, death: Death, now: float) -> None:
    """One line per death: slot, pid, exit code or signal, cause, uptime (s), peak RSS, and (unless quiet)
    the last stderr lines."""
    fields: dict[str, Any] = {
        "slot": child.slot,
        "pid": child.pid,
        "exit_code": death.exit_code,
        "signal": death.signal,
        "cause": death.cause.value,
        "uptime_s": round(now - child.started_mono, 3),
    }
    if child.memory is not None:  # the last sample: an OOM kill's peak is at least this
        fields["peak_rss_bytes"] = child.memory.peak_rss_bytes
    if death.cause not in QUIET_CAUSES:
        fields["last_words"] = child.last_words()
    log_fn = log.info if death.cause in (*QUIET_CAUSES, Cause.DEADLINE, Cause.CANCELLED) else log.warning
    log_fn(f"{child.name} exited: " + death.describe(), **fields)
