"""Per-channel statistics gathered while decoding: what ``plan_channels`` decides from.

Streaming, fixed-size state whatever the duration: a Gram matrix of the channels (sums of x_i·x_j,
so the energy of ANY average of channels is known without decoding again), a level histogram per
channel and a joint level histogram per channel pair (20 ms frames, 1 dB bins). Activity thresholds
are chosen at the end from each channel's own histogram, so a quiet recording is not taken for a
silent one and a hissing channel is not taken for speech. Memory: O(channels² · bins²), ~2.3 MB at
8 channels, nothing that grows with the recording.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np

FRAME_S = 0.02  # analysis frame: 20 ms
FLOOR_DB = -100.0  # levels are clipped to [FLOOR_DB, 0] dBFS; one bin per dB
BINS = 101
ABS_ACTIVE_DB = -60.0  # a frame quieter than this (RMS, dBFS) is never speech
NOISE_MARGIN_DB = 12.0  # active = this far above the channel's own noise floor (its 10th-percentile frame)
DOMINANCE_DB = 15.0  # one channel "carries its own speech" in a frame where it is this much louder than another


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """Summary of a recording's channels (indices are 0-based source channels).

    ``gram[i][j]``: mean of x_i·x_j over all samples (x in [-1, 1]); its diagonal is each channel's
    energy. ``active_s[c]``: seconds of 20 ms frames above channel c's activity threshold
    (``threshold_db[c]``, dBFS). ``level_db[c]``: RMS level of c's active frames (dBFS; FLOOR_DB when none).
    For a pair, fractions of the ROW channel's active frames: ``own[i][j]``: i is at least
    DOMINANCE_DB louder than j, or j is not active (speech of i's own); ``under[i][j]``: j is active
    and at least DOMINANCE_DB louder (i only echoes j: crosstalk). ``overlap[i][j]``: frames active on
    both / frames active on either.
    """

    channels: int
    duration_s: float
    gram: tuple[tuple[float, ...], ...]
    active_s: tuple[float, ...]
    threshold_db: tuple[float, ...]
    level_db: tuple[float, ...]
    own: tuple[tuple[float, ...], ...]
    under: tuple[tuple[float, ...], ...]
    overlap: tuple[tuple[float, ...], ...]

    def energy(self, channel: int) -> float:
        return self.gram[channel][channel]

    def mix_energy(self, channels: tuple[int, ...]) -> float:
        """Mean square of the plain average of ``channels`` (from the Gram matrix, no audio needed)."""
        k = len(channels)
        return sum(self.gram[i][j] for i in channels for j in channels) / (k * k) if k else 0.0

    def mix_retention_db(self, channels: tuple[int, ...]) -> float:
        """Energy the average keeps, in dB, relative to uncorrelated channels (mean energy / k).

        0 dB: independent channels; +10·log10(k): identical channels; very negative: the channels
        cancel (an inverted channel gives -inf). ``nan`` when the channels hold no energy at all.
        """
        k = len(channels)
        mean = sum(self.energy(c) for c in channels) / k if k else 0.0
        if mean <= 0.0:
            return math.nan
        mix = self.mix_energy(channels)
        return 10 * math.log10(mix * k / mean) if mix > 0 else -math.inf

    def correlation(self, i: int, j: int) -> float:
        """Zero-lag correlation of two channels (uncentred, i.e. cosine of the waveforms)."""
        denom = math.sqrt(self.energy(i) * self.energy(j))
        return self.gram[i][j] / denom if denom > 0 else 0.0

    def own_share(self, i: int, j: int) -> float:
        """Of channel i's activity that is not j bleeding in, the share that j does not carry.

        ~1: i has speech of its own (a call-centre line, even when the other party talks most);
        ~0: i and j carry the same sound (dual mono, two mics in one room).
        """
        rest = 1.0 - self.under[i][j]
        return self.own[i][j] / rest if rest > 1e-9 else 0.0

    def as_dict(self) -> dict[str, object]:
        """Rounded, JSON-friendly summary for logs and events."""
        n = range(self.channels)
        return {
            "channels": self.channels,
            "active_s": [round(a, 2) for a in self.active_s],
            "level_db": [round(v, 1) for v in self.level_db],
            "mix_retention_db": _finite_or_none(self.mix_retention_db(tuple(n))),
            "correlation": [[round(self.correlation(i, j), 3) for j in n] for i in n],
            "own_share": [[round(self.own_share(i, j), 3) for j in n] for i in n],
        }


def _finite_or_none(value: float) -> float | None:
    return round(value, 1) if math.isfinite(value) else None


class StatsAccumulator:
    """Feeds blocks of float samples (shape ``(n, channels)``, values in [-1, 1]); ``finish`` summarises.

    Blocks may have any length: a remainder shorter than one frame is carried to the next block.
    """

    def __init__(self, channels: int, sample_rate: int) -> None:
        self.channels = channels
        self.sample_rate = sample_rate
        self._frame = round(sample_rate * FRAME_S)
        self.samples = 0
        self._gram = np.zeros((channels, channels), dtype=np.float64)
        self._hist = np.zeros((channels, BINS), dtype=np.int64)
        self._pairs = list(combinations(range(channels), 2))
        self._joint = np.zeros((len(self._pairs), BINS * BINS), dtype=np.int64)
        self._carry = np.empty((0, channels), dtype=np.float64)

    def add(self, block: np.ndarray) -> None:
        x = np.asarray(block, dtype=np.float64).reshape(-1, self.channels)
        self.samples += len(x)
        self._gram += x.T @ x
        if len(self._carry):
            x = np.concatenate([self._carry, x])
        whole = len(x) // self._frame * self._frame
        self._carry = x[whole:].copy()
        if not whole:
            return
        frames = x[:whole].reshape(-1, self._frame, self.channels)
        ms = np.einsum("fsc,fsc->fc", frames, frames) / self._frame
        db = 10 * np.log10(np.maximum(ms, 1e-12))
        bins = np.clip(np.rint(db - FLOOR_DB), 0, BINS - 1).astype(np.int64)  # (frames, channels)
        for c in range(self.channels):
            self._hist[c] += np.bincount(bins[:, c], minlength=BINS)
        for p, (i, j) in enumerate(self._pairs):
            self._joint[p] += np.bincount(bins[:, i] * BINS + bins[:, j], minlength=BINS * BINS)

    def finish(self) -> ChannelStats:
        n, ch = max(self.samples, 1), self.channels
        gram = self._gram / n
        thresholds = [_threshold_bin(self._hist[c]) for c in range(ch)]
        levels = np.arange(BINS) + FLOOR_DB
        active = [int(self._hist[c, t:].sum()) for c, t in enumerate(thresholds)]
        level_db = []
        for c, t in enumerate(thresholds):
            counts = self._hist[c, t:]
            power = float((counts * 10 ** (levels[t:] / 10)).sum())
            level_db.append(10 * math.log10(power / counts.sum()) if counts.sum() and power > 0 else FLOOR_DB)
        own = np.eye(ch)
        under = np.zeros((ch, ch))
        overlap = np.eye(ch)
        a_idx, b_idx = np.meshgrid(np.arange(BINS), np.arange(BINS), indexing="ij")
        for p, (i, j) in enumerate(self._pairs):
            h = self._joint[p].reshape(BINS, BINS)  # rows: level of i, columns: level of j
            act_i, act_j = a_idx >= thresholds[i], b_idx >= thresholds[j]
            louder_i, louder_j = a_idx - b_idx >= DOMINANCE_DB, b_idx - a_idx >= DOMINANCE_DB
            own[i, j] = _share(h, act_i & (~act_j | louder_i), active[i])
            own[j, i] = _share(h, act_j & (~act_i | louder_j), active[j])
            under[i, j] = _share(h, act_i & act_j & louder_j, active[i])
            under[j, i] = _share(h, act_i & act_j & louder_i, active[j])
            either = int(h[act_i | act_j].sum())
            overlap[i, j] = overlap[j, i] = _share(h, act_i & act_j, either)
        return ChannelStats(
            channels=ch,
            duration_s=self.samples / self.sample_rate,
            gram=_rows(gram),
            active_s=tuple(a * FRAME_S for a in active),
            threshold_db=tuple(float(t + FLOOR_DB) for t in thresholds),
            level_db=tuple(level_db),
            own=_rows(own),
            under=_rows(under),
            overlap=_rows(overlap),
        )


def gate_crosstalk(block: np.ndarray, channel: int, frame: int) -> np.ndarray:
    """``block[:, channel]`` (float, shape ``(n, channels)``) with crosstalk muted: each ``frame``-sample
    frame (the grid starts at ``block[0]``) in which another channel is at least DOMINANCE_DB louder
    is zeroed, so a split channel's transcription does not pick up the other party bleeding in.
    Returns a fresh float32 array of n samples.
    """
    out = np.array(block[:, channel], dtype=np.float32)
    if block.shape[1] < 2 or not len(out):
        return out
    n = len(block)
    whole = -(-n // frame) * frame
    x = np.zeros((whole, block.shape[1]), dtype=np.float64)
    x[:n] = block
    frames = x.reshape(-1, frame, block.shape[1])
    db = 10 * np.log10(np.maximum(np.einsum("fsc,fsc->fc", frames, frames) / frame, 1e-12))
    others = np.delete(db, channel, axis=1).max(axis=1)
    muted = (others - db[:, channel] >= DOMINANCE_DB) & (others >= ABS_ACTIVE_DB)
    out[np.repeat(muted, frame)[:n]] = 0.0
    return out


def _threshold_bin(hist: np.ndarray) -> int:
    """Activity threshold (bin index): NOISE_MARGIN_DB above the 10th-percentile frame, never below ABS_ACTIVE_DB."""
    total = int(hist.sum())
    floor = int(np.searchsorted(np.cumsum(hist), 0.1 * total)) if total else 0
    return int(max(ABS_ACTIVE_DB - FLOOR_DB, floor + NOISE_MARGIN_DB))


def _share(h: np.ndarray, mask: np.ndarray, total: int) -> float:
    return float(h[mask].sum()) / total if total else 0.0


def _rows(m: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in m)
