"""How much memory a job will take: ``estimate`` → ``JobEstimate`` (pure, from measured constants).

Peak RSS of one transcription, in MB (MiB), as measured by ``python -m benchmarks long`` (tiny
models, 1 thread; figures and method in docs/drafts/engine-windows.md):

    peak = base + INFERENCE_MB + per_s * min(duration, window) + clustering + PER_HOUR_MB * hours

- ``base``: this process's RSS with the models loaded, read when the Engine is built (so real,
  larger models count at their real size, and so does anything else the process holds);
- ``INFERENCE_MB``: what the first inference adds once (torch/OpenMP workspaces, FunASR's lazy
  imports);
- ``per_s``: the working set per second of audio in one FunASR call (the window's float32 samples,
  features, encoder activations and, when diarizing, CAM++'s 1.5 s chunk copies held until the end
  of the call): ``PER_S_MB`` + ``PER_S_SPK_MB``. One window bounds it: audio longer than
  ``window_s`` never holds more than one window (+2 s) in one call;
- ``clustering``: the one clustering at the end, dense over at most 2,048 embedding windows
  (``clustering.py``: a sample beyond that): ``CLUSTER_COPIES`` float64 matrices of N × N, N = one
  window per 0.75 s of audio (all of it counted as speech), at most 2,048: up to 96 MB, reached
  at about 25 minutes; constant beyond;
- ``PER_HOUR_MB``: what accumulates over the recording (sentences and tokens as Python objects,
  speaker embeddings and their times: 192 float32 per 0.75 s of speech).

Real models add their activations on top of ``per_s`` (a Paraformer-large encoder is ~100× the
tiny one): measure with the real models before tightening ``engine.max_memory_mb``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from funasr_fleet.errors import AudioTooLong

__all__ = [
    "CLUSTER_COPIES", "INFERENCE_MB", "PER_HOUR_MB", "PER_S_MB", "PER_S_SPK_MB", "JobEstimate", "current_rss_mb",
    "estimate",
]  # fmt: skip

# fitted 2026-12-01 (docs/drafts/engine-windows.md): 10 min at window_s 60, 300 and 1200, with and
# without diarization, 20 min at 300; the estimate lands 0-8 % above the measured peaks (conservative)
INFERENCE_MB = 160.0
PER_S_MB = 0.17
PER_S_SPK_MB = 0.02
CLUSTER_COPIES = 3
MAX_DENSE = 2048
SHIFT_S = 0.75
PER_HOUR_MB = 10.0


@dataclass(frozen=True, slots=True)
class JobEstimate:
    """A job's expected peak RSS (MB) and whether it fits ``limit_mb`` (None: no limit)."""

    duration_s: float
    window_s: float
    windows: int
    peak_rss_mb: float
    limit_mb: int | None = None

    @property
    def fits(self) -> bool:
        return self.limit_mb is None or self.peak_rss_mb <= self.limit_mb

    def check(self) -> None:
        """Raises ``AudioTooLong`` (code ``audio_too_long``, permanent) when the job does not fit."""
        if not self.fits:
            raise AudioTooLong(
                f"{self.duration_s:.0f} s of audio needs about {self.peak_rss_mb:.0f} MB "
                f"(windows of {self.window_s:g} s), more than engine.max_memory_mb = {self.limit_mb}"
            )

    def as_dict(self) -> dict[str, float | int | bool | None]:
        return {"duration_s": self.duration_s, "window_s": self.window_s, "windows": self.windows,
                "peak_rss_mb": round(self.peak_rss_mb, 1), "limit_mb": self.limit_mb, "fits": self.fits}  # fmt: skip


def estimate(
    duration_s: float, *, window_s: float, diarize: bool, base_mb: float, limit_mb: int | None = None
) -> JobEstimate:
    """The peak-RSS estimate (module docstring) of ``duration_s`` seconds (>= 0) of audio."""
    duration_s = max(0.0, float(duration_s))
    per_s = PER_S_MB + (PER_S_SPK_MB if diarize else 0.0)
    in_one_call = min(duration_s, window_s + 2.0)
    rows = min(duration_s / SHIFT_S, MAX_DENSE) if diarize else 0.0
    clustering = CLUSTER_COPIES * rows * rows * 8 / 2**20
    peak = base_mb + INFERENCE_MB + per_s * in_one_call + clustering + PER_HOUR_MB * duration_s / 3600
    windows = 1 if duration_s <= window_s else math.ceil(duration_s / window_s)
    return JobEstimate(duration_s, window_s, windows, peak, limit_mb)


def current_rss_mb() -> float:
    """This process's resident set now, MB (from /proc; 0.0 where there is no /proc)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
