"""The supervisor's per-run directory (heartbeat files, metrics shards), and removing dead runs' ones."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from funasr_fleet.pids import pid_alive


def make_run_dir(state_dir: Path | None) -> Path:
    """A fresh ``run-<pid>-<ms>`` directory under ``supervisor.state_dir`` (default: the temp dir).

    Leftovers of supervisors that are gone (killed, host reboot) are removed first: their metrics
    shards would mix into this run's ``/metrics``.
    """
    base = state_dir or Path(tempfile.gettempdir()) / f"funasr-fleet-{os.getuid()}"
    base.mkdir(parents=True, exist_ok=True)
    for old in base.glob("run-*"):
        try:
            pid = int(old.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(old, ignore_errors=True)
    run_dir = base / f"run-{os.getpid()}-{int(time.time() * 1000)}"
    run_dir.mkdir()
    return run_dir
