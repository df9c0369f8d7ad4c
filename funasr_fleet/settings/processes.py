"""``[consumer]``, ``[supervisor]``, ``[log]``: how consumers run, retry and are supervised, and how they log."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from funasr_fleet.settings.section import Section


class ConsumerSettings(Section):
    id: str | None = Field(None, description="Consumer id used as CloudEvents source; default host:pid.")
    retry_max_attempts: int = Field(5, ge=1, description="Attempts for transient failures before dead-lettering.")
    retry_base_delay_s: float = Field(2.0, gt=0, description="First retry delay; doubles each attempt, with jitter.")
    retry_max_delay_s: float = Field(300.0, gt=0, description="Cap on one retry delay.")
    deadline_base_s: float = Field(300.0, gt=0, description="Job deadline = base + factor x audio duration.")
    deadline_factor: float = Field(2.0, ge=0, description="Job deadline = base + factor x audio duration.")
    result_reuse: bool = Field(True, description="Reuse outputs of identical audio bytes + engine + options.")
    delete_source: bool = Field(False, description="Delete the source object after a successful job.")
    tmp_dir: Path | None = Field(None, description="Where audio is staged; default: the system temp dir.")
    progress_events: bool = Field(True, description="Publish job.progress events at each stage.")
    boot_timeout_s: float = Field(
        60.0, gt=0, description="Give up (boot-failure exit) if the broker is unreachable this long at start."
    )
    heartbeat_file: Path | None = Field(None, description="Touched from the connection loop; set by the supervisor.")


class SupervisorSettings(Section):
    consumers: int | Literal["auto"] = Field("auto", description="Consumer processes; auto = usable cores // threads.")
    threads_per_consumer: int | None = Field(
        None, ge=1, description="Threads per consumer; unset = usable cores // consumers (never oversubscribed)."
    )
    http_host: str = Field("0.0.0.0", description="Bind address of /healthz, /readyz, /metrics.")
    http_port: int = Field(9100, ge=0, le=65535, description="Port of /healthz, /readyz, /metrics (0 = off).")
    heartbeat_timeout_s: float = Field(60.0, gt=0, description="A consumer silent this long is killed as hung.")
    grace_period_s: float = Field(
        3600.0, ge=0, description="On SIGTERM, wait this long for jobs to finish; keep < terminationGracePeriodSeconds."
    )
    restart_backoff_base_s: float = Field(1.0, gt=0, description="First restart delay after a crash; doubles.")
    restart_backoff_max_s: float = Field(60.0, gt=0, description="Cap on the restart delay.")
    max_boot_failures: int = Field(3, ge=1, description="Consecutive boot failures that halt the supervisor.")
    crash_window_s: float = Field(300.0, gt=0, description="Window for counting runtime crashes.")
    max_crashes_in_window: int = Field(
        10, ge=1, description="Runtime crashes within the window that halt the supervisor."
    )
    state_dir: Path | None = Field(None, description="Heartbeat files and metrics shards; default: a temp dir.")
    boot_timeout_s: float = Field(
        600.0, gt=0, description="A booting consumer (loading its model) silent this long is killed as hung."
    )
    abort_grace_s: float = Field(
        5.0, gt=0, description="After SIGABRT to a hung consumer, wait this long before SIGKILL."
    )
    preload: Literal["none", "fork"] = Field(
        "none",
        description="fork = load the model once in a zygote and fork consumers from it: weights shared "
        "copy-on-write, restarts in milliseconds; CPU only. none = each consumer loads its own.",
    )
    announcer: bool = Field(
        True,
        description="Run the dead-letter announcer (`funasr-fleet announce`) as one extra child: broker dead-letters "
        "get their job.failed event and status. Off when it runs as its own Deployment.",
    )


class LogSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto = console on a TTY, JSON lines otherwise."
    )
