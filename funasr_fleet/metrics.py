"""Prometheus metrics of the fleet, safe across processes.

The supervisor calls :func:`enable_multiprocess` with a fresh directory before it starts any
consumer; every consumer inherits ``PROMETHEUS_MULTIPROC_DIR`` and writes its samples into
mmap files there, and the supervisor's ``/metrics`` aggregates them with
``MultiProcessCollector``. Without the variable (a single ``consume`` or ``transcribe`` run)
the same helpers feed an ordinary in-process registry.

Metric objects are created lazily, on first use, because prometheus-client picks its value
storage (mmap file or in-memory) when a value is created: creating them at import would freeze
the choice before the supervisor had a chance to set the directory. No torch import here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client import multiprocess as _mp
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
NO_ERROR = "none"

JOB_DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf"))
RTF_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, float("inf"))
QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, float("inf"))


@dataclass(frozen=True)
class FleetMetrics:
    """The metric objects; one instance per process (see :func:`get`)."""

    registry: CollectorRegistry
    jobs: Counter
    job_duration: Histogram
    job_rtf: Histogram
    audio_seconds: Counter
    in_flight: Gauge
    queue_wait: Histogram
    consumers_alive: Gauge
    consumers_ready: Gauge
    restarts: Counter


def multiprocess_dir() -> Path | None:
    """The shared samples directory, when this process runs under a supervisor."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def enable_multiprocess(path: Path) -> None:
    """Point this process (and the children it starts afterwards) at ``path`` for samples.

    Must run before the first metric value is created in this process; children inherit the
    environment variable and pick it up at their own start.
    """
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)
    values.ValueClass = values.get_value_class()
    get.cache_clear()


@functools.cache
def get() -> FleetMetrics:
    """Create (once) and return this process's metric objects."""
    # Re-read the environment: the value storage must match PROMETHEUS_MULTIPROC_DIR now,
    # not whatever it was when prometheus_client was first imported.
    values.ValueClass = values.get_value_class()
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_MEMORY)
    return FleetMetrics(
        registry=registry,
        jobs=Counter(
            "fleet_jobs",
            "Job attempts by outcome (succeeded, duplicate, retried, requeued, failed, ignored, fanned_out) "
            "and error code.",
            ["status", "error_code"],
            registry=registry,
        ),
        job_duration=Histogram(
            "fleet_job_duration_seconds",
            "Wall time of one job attempt in a consumer (fetch, transcribe, upload, publish).",
            buckets=JOB_DURATION_BUCKETS,
            registry=registry,
        ),
        job_rtf=Histogram(
            "fleet_job_real_time_factor",
            "Inference seconds per second of audio (lower is faster).",
            buckets=RTF_BUCKETS,
            registry=registry,
        ),
        audio_seconds=Counter(
            "fleet_audio_seconds",
            "Seconds of audio transcribed successfully.",
            registry=registry,
        ),
        in_flight=Gauge(
            "fleet_jobs_in_flight",
            "Jobs being processed right now (summed over live consumers).",
            multiprocess_mode="livesum",
            registry=registry,
        ),
        queue_wait=Histogram(
            "fleet_queue_wait_seconds",
            "Time from a job's publication to the start of its processing.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        ),
        consumers_alive=Gauge(
            "fleet_consumers_alive",
            "Consumer processes running (set by the supervisor).",
            multiprocess_mode="livemax",
            registry=registry,
        ),
        consumers_ready=Gauge(
            "fleet_consumers_ready",
            "Consumer processes whose heartbeat says ready or busy (set by the supervisor).",
            multiprocess_mode="livemax",
            registry=registry,
        ),
        restarts=Counter(
            "fleet_consumer_restarts",
            "Consumer replacements by cause (crash, boot_failure, hung, deadline, oom_suspected, rolling).",
            ["cause"],
            registry=registry,
        ),
    )


# --- helpers for consumers -------------------------------------------------------------------


def job_started(queue_wait_s: float | None) -> None:
    """A job attempt begins: count it in flight and record how long it waited in the queue."""
    m = get()
    m.in_flight.inc()
    if queue_wait_s is not None and queue_wait_s >= 0:
        m.queue_wait.observe(queue_wait_s)


def job_finished(
    status: str,  # consumer.context.Outcome
    error_code: str | None = None,
    duration_s: float | None = None,
    rtf: float | None = None,
    audio_s: float | None = None,
) -> None:
    """A job attempt ends (whatever the outcome); pairs with :func:`job_started`."""
    m = get()
    m.in_flight.dec()
    m.jobs.labels(status=status, error_code=error_code or NO_ERROR).inc()
    if duration_s is not None and duration_s >= 0:
        m.job_duration.observe(duration_s)
    if rtf is not None and rtf >= 0:
        m.job_rtf.observe(rtf)
    if audio_s is not None and audio_s > 0 and status == "succeeded":
        m.audio_seconds.inc(audio_s)


# --- helpers for the supervisor --------------------------------------------------------------


def consumers(alive: int, ready: int) -> None:
    """The supervisor's gauges: consumer processes running, and those whose heartbeat says ready or busy."""
    m = get()
    m.consumers_alive.set(alive)
    m.consumers_ready.set(ready)


def consumer_restarted(cause: str) -> None:
    """One consumer replaced; ``cause``: a supervisor.policy.Cause value, or ``rolling``."""
    get().restarts.labels(cause=cause).inc()


class _ConsumerMemory(Collector):
    """The supervisor's memory samples of its children, exposed as they were last set.

    Plain values kept here rather than multiprocess gauges: the supervisor alone knows them, and a
    slot's series must disappear with its child instead of lingering in an mmap file.
    """

    def __init__(self) -> None:
        self.by_slot: dict[str, tuple[int, int]] = {}

    def collect(self) -> Iterator[Metric]:
        rows = sorted(self.by_slot.items())  # one reference: the supervisor replaces the dict whole
        rss = GaugeMetricFamily(
            "fleet_consumer_rss_bytes", "Resident set of the child serving each slot (VmRSS).", labels=["slot"]
        )
        peak = GaugeMetricFamily(
            "fleet_consumer_peak_rss_bytes",
            "Peak resident set of the child serving each slot since it started (VmHWM).",
            labels=["slot"],
        )
        for slot, (now_b, peak_b) in rows:
            rss.add_metric([slot], now_b)
            peak.add_metric([slot], peak_b)
        yield rss
        yield peak


_MEMORY = _ConsumerMemory()


def consumer_memory(by_slot: Mapping[str, tuple[int, int]]) -> None:
    """The supervisor's latest samples: slot label (``"0"``.., ``"zygote"``) -> (RSS, peak RSS) in bytes.

    Replaces the previous set whole (a slot missing here has no series until its next child is sampled).
    """
    _MEMORY.by_slot = dict(by_slot)


def mark_process_dead(pid: int) -> None:
    """Drop a reaped child's live-gauge files so ``live*`` gauges forget it (counters stay)."""
    path = multiprocess_dir()
    if path is not None:
        _mp.mark_process_dead(pid, str(path))


def scrape_registry() -> CollectorRegistry:
    """The registry to expose: all processes' samples in multiprocess mode, else this process's."""
    path = multiprocess_dir()
    if path is None:
        return get().registry
    registry = CollectorRegistry()
    _mp.MultiProcessCollector(registry, path=str(path))
    registry.register(_MEMORY)
    return registry


def render() -> tuple[bytes, str]:
    """Prometheus text exposition of :func:`scrape_registry` and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(scrape_registry()), CONTENT_TYPE_LATEST
