"""Per-job staging directories on local disk (the downloaded audio), and removing dead consumers' ones.

A directory is ``<tmp root>/fleet-job-<pid>-<random>``: the pid lets the next consumer to boot on
this machine remove what a SIGKILLed one (OOM killer, hung-kill) left, while several consumers
share ``consumer.tmp_dir``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from funasr_fleet.pids import pid_alive

log = structlog.get_logger("funasr_fleet.consumer.staging")

STAGING_PREFIX = "fleet-job-"


def staging_root(tmp_dir: Path | None) -> Path:
    """``consumer.tmp_dir`` (created if missing), else the system temp dir."""
    if tmp_dir is None:
        return Path(tempfile.gettempdir())
    tmp_dir.mkdir(parents=True, exist_ok=True)
    return tmp_dir


@contextmanager
def staging_dir(root: Path) -> Iterator[Path]:
    """A fresh directory for one job under ``root``, removed (with everything in it) on exit."""
    path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep_stale_staging(root: Path) -> int:
    """Remove staging dirs ``fleet-job-<pid>-*`` under ``root`` whose process is gone; returns how many.

    Dirs of live processes (and this one's) are kept.
    """
    removed = 0
    try:
        entries = list(root.glob(f"{STAGING_PREFIX}*-*"))
    except OSError:
        return 0
    for entry in entries:
        pid_text = entry.name[len(STAGING_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or pid_alive(int(pid_text)):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    if removed:
        log.info("removed staging dirs of dead consumers", count=removed, dir=str(root))
    return removed
