"""Decoded audio as a random-access source: ``AudioSource`` (16 kHz, up to 8 channels, any length).

Why a file and not an array: a 4-hour recording is 920 MB as float32 mono (more with channels);
kept in RAM, peak memory grows with duration. Decoded samples go to a per-job temporary file of
interleaved int16 frames and are read back in windows with ``pread`` into fresh arrays. Not a
memory map: touched mmap pages count in the process's RSS until the kernel reclaims them.

Why int16 on disk: it is the model's own domain (FunASR's frontend scales waveforms to the 16-bit
range), 16-bit sources round-trip exactly (``s / 32768`` is what the float path produced), and it
costs half of float32: 115 MB per audio hour per channel. Float sources (mp3, aac, opus) gain
quantisation noise at -96 dBFS, far below their own codec noise.

The temporary file is opened unnamed (``O_TMPFILE`` where the filesystem supports it): it vanishes
when closed, garbage-collected, or when the process dies, SIGKILL included.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Protocol, Self

import numpy as np

from funasr_fleet.engine.channelstats import FRAME_S, ChannelStats, StatsAccumulator, gate_crosstalk
from funasr_fleet.errors import TooManyChannels, UndecodableAudio

SAMPLE_RATE = 16000
MAX_CHANNELS = 8
_INT16_SCALE = 32768.0
_BLOCK = SAMPLE_RATE * 2  # samples per channel buffered before a write (2 s; ~1 MB at 8 channels)
_READ_CHUNK = SAMPLE_RATE * 30  # samples per channel read at a time (a whole number of frames)
_FRAME = int(SAMPLE_RATE * FRAME_S)  # crosstalk gating grid: 20 ms frames from sample 0


@dataclass(frozen=True, slots=True)
class AudioInfo:
    """What the container says about the source (cheap: no decoding)."""

    container: str
    codec: str
    sample_rate: int
    channels: int
    duration_s: float | None  # from metadata; None when the container does not say
    size_bytes: int
    has_video: bool = False
    decode_errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for ``OutputMeta.audio`` and events)."""
        return asdict(self)


class _Store(Protocol):
    channels: int
    num_samples: int

    def frames(self, start: int, stop: int) -> np.ndarray: ...  # (n, channels), int16 or float32

    def close(self) -> None: ...


class AudioSource:
    """Decoded audio at 16 kHz: ``channels`` × ``num_samples``, read in windows.

    Build with ``funasr_fleet.engine.audio.decode`` (a file, staged on disk) or ``from_array`` (in
    memory). Close it (or use ``with``) to delete the staged file; garbage collection does too.
    """

    def __init__(self, store: _Store, info: AudioInfo, stats: ChannelStats, decode_s: float = 0.0) -> None:
        self._store = store
        self.info = info
        self.stats = stats
        self.decode_s = decode_s

    @property
    def channels(self) -> int:
        return self._store.channels

    @property
    def num_samples(self) -> int:
        """Samples per channel."""
        return self._store.num_samples

    @property
    def duration_s(self) -> float:
        return self.num_samples / SAMPLE_RATE

    @property
    def duration_ms(self) -> int:
        return round(self.num_samples * 1000 / SAMPLE_RATE)

    def read(self, start: int = 0, stop: int | None = None, channels: Sequence[int] | None = None) -> np.ndarray:
        """Samples ``[start, stop)`` (sample indices, clamped to the audio) as float32 mono in [-1, 1].

        ``channels``: 0-based source channels to average (default: all, the plain mix). Returns a
        fresh array of ``stop - start`` samples (fewer at the end of the audio). Raises ValueError
        for a channel index out of range, an empty selection, or a closed source.
        """
        n = self.num_samples
        stop = n if stop is None else min(max(int(stop), 0), n)
        start = min(max(int(start), 0), stop)
        sel = tuple(range(self.channels)) if channels is None else tuple(int(c) for c in channels)
        if not sel or any(c < 0 or c >= self.channels for c in sel):
            raise ValueError(f"channels {sel} not in 0..{self.channels - 1}")
        out = np.empty(stop - start, dtype=np.float32)
        for pos in range(start, stop, _READ_CHUNK):  # chunked: RAM beyond ``out`` stays small at 8 channels
            end = min(pos + _READ_CHUNK, stop)
            out[pos - start : end - start] = _average(self._store.frames(pos, end), sel, self.channels)
        return out

    def read_isolated(self, start: int = 0, stop: int | None = None, channel: int = 0) -> np.ndarray:
        """Channel ``channel``, samples ``[start, stop)``, float32 mono, with crosstalk muted.

        Every 20 ms frame (grid fixed from sample 0, so any window equals the same slice of the
        whole) in which another channel is at least 15 dB louder is zeroed: on a call-centre line
        that is the other party bleeding in, which would otherwise be transcribed twice. For split
        transcription. Raises ValueError for a channel out of range or a closed source.
        """
        n = self.num_samples
        stop = n if stop is None else min(max(int(stop), 0), n)
        start = min(max(int(start), 0), stop)
        if not 0 <= channel < self.channels:
            raise ValueError(f"channel {channel} not in 0..{self.channels - 1}")
        out = np.empty(stop - start, dtype=np.float32)
        first = start - start % _FRAME
        for pos in range(first, stop, _READ_CHUNK):
            end = min(pos + _READ_CHUNK, -(-stop // _FRAME) * _FRAME, n)
            gated = gate_crosstalk(self.read_frames(pos, end), channel, _FRAME)
            lo, hi = max(pos, start), min(end, stop)
            out[lo - start : hi - start] = gated[lo - pos : hi - pos]
        return out

    def read_frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Samples ``[start, stop)`` of every channel: float32, shape ``(n, channels)``, in [-1, 1]."""
        n = self.num_samples
        stop = n if stop is None else min(max(int(stop), 0), n)
        start = min(max(int(start), 0), stop)
        block = self._store.frames(start, stop)
        if block.dtype == np.int16:
            return block.astype(np.float32) * np.float32(1.0 / _INT16_SCALE)
        return block.astype(np.float32, copy=True)

    @property
    def samples(self) -> np.ndarray:
        """The WHOLE recording as float32 mono (plain mix of all channels): loads everything into RAM.

        For short audio and tests; long-audio code reads windows with ``read``.
        """
        if isinstance(self._store, _ArrayStore) and self.channels == 1:
            return self._store.data.reshape(-1)
        return self.read()

    def close(self) -> None:
        """Delete the staged samples (idempotent)."""
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AudioSource({self.channels} ch, {self.duration_s:.2f} s, {self.info.container}/{self.info.codec})"

    @classmethod
    def from_array(cls, samples: np.ndarray, source: str = "array") -> AudioSource:
        """Wrap float samples at 16 kHz, kept in memory: 1-D (mono) or ``(samples, channels)``.

        Raises ``UndecodableAudio`` for non-float data or another shape (a channels-first
        ``(channels, samples)`` array is refused, not guessed), ``TooManyChannels`` past 8.
        """
        arr = np.asarray(samples)
        if not np.issubdtype(arr.dtype, np.floating):
            raise UndecodableAudio(f"{source}: expected float samples at 16 kHz, got {arr.dtype}")
        if arr.ndim == 1:
            arr = arr.reshape(-1, 1)
        elif arr.ndim != 2 or arr.shape[1] > arr.shape[0]:
            raise UndecodableAudio(f"{source}: expected a 1-D mono array or (samples, channels), got shape {arr.shape}")
        if arr.shape[1] > MAX_CHANNELS:
            raise TooManyChannels(f"{source}: {arr.shape[1]} channels; at most {MAX_CHANNELS} are supported")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        acc = StatsAccumulator(arr.shape[1], SAMPLE_RATE)
        for start in range(0, len(arr), _BLOCK):
            acc.add(arr[start : start + _BLOCK])
        info = AudioInfo(
            container="array", codec="pcm_f32le", sample_rate=SAMPLE_RATE, channels=arr.shape[1],
            duration_s=len(arr) / SAMPLE_RATE, size_bytes=arr.nbytes,
        )  # fmt: skip
        return cls(_ArrayStore(arr), info, acc.finish())


def _average(block: np.ndarray, sel: tuple[int, ...], channels: int) -> np.ndarray:
    scale = 1.0 / _INT16_SCALE if block.dtype == np.int16 else 1.0
    if len(sel) == 1:
        one = block[:, sel[0]].astype(np.float32)
        return one * np.float32(scale) if scale != 1.0 else one
    picked = block if sel == tuple(range(channels)) else block[:, list(sel)]
    return picked.astype(np.float32).sum(axis=1) * np.float32(scale / len(sel))


DecodedAudio = AudioSource  # the name callers used before sources could be staged on disk


class _ArrayStore:
    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.channels = data.shape[1]
        self.num_samples = data.shape[0]

    def frames(self, start: int, stop: int) -> np.ndarray:
        return self.data[start:stop]

    def close(self) -> None:
        pass  # the caller's array: nothing to free


class _PcmFile:
    """Interleaved int16 frames in an (unnamed) temporary file."""

    def __init__(self, fh: IO[bytes], channels: int, num_samples: int) -> None:
        self._fh: IO[bytes] | None = fh
        self.channels = channels
        self.num_samples = num_samples

    def frames(self, start: int, stop: int) -> np.ndarray:
        if self._fh is None:
            raise ValueError("the audio source is closed")
        out = np.empty((stop - start, self.channels), dtype=np.int16)
        view, offset, fd = memoryview(out.data).cast("B"), start * self.channels * 2, self._fh.fileno()
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"staged audio ended early ({done} of {len(view)} bytes at {offset})")
            done += got
        return out

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class PcmWriter:
    """Streams float blocks ``(n, channels)`` to a temporary int16 file, with channel statistics.

    Memory: one 2-second buffer. ``finish`` hands the file over as a store; ``abort`` deletes it.
    """

    def __init__(self, channels: int, tmp_dir: Path | str | None = None) -> None:
        self.channels = channels
        self.num_samples = 0
        self._fh: IO[bytes] | None = tempfile.TemporaryFile(prefix="fleet-pcm-", suffix=".s16", dir=tmp_dir)  # noqa: SIM115 - owned by the store
        self._buf = np.empty((_BLOCK, channels), dtype=np.float32)
        self._fill = 0
        self._stats = StatsAccumulator(channels, SAMPLE_RATE)

    def append(self, block: np.ndarray) -> None:
        """``block``: float samples, shape ``(n, channels)``, nominally in [-1, 1] (clipped)."""
        pos = 0
        while pos < len(block):
            take = min(len(block) - pos, _BLOCK - self._fill)
            self._buf[self._fill : self._fill + take] = block[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == _BLOCK:
                self._flush()

    def _flush(self) -> None:
        if not self._fill or self._fh is None:
            return
        pcm = np.clip(np.rint(self._buf[: self._fill] * _INT16_SCALE), -32768, 32767).astype(np.int16)
        self._stats.add(pcm.astype(np.float32) * np.float32(1.0 / _INT16_SCALE))
        self._fh.write(pcm.tobytes())
        self.num_samples += self._fill
        self._fill = 0

    @property
    def pending(self) -> int:
        """Samples per channel taken so far (written or buffered)."""
        return self.num_samples + self._fill

    def finish(self) -> tuple[_PcmFile, ChannelStats]:
        self._flush()
        assert self._fh is not None
        self._fh.flush()
        store = _PcmFile(self._fh, self.channels, self.num_samples)
        self._fh = None
        return store, self._stats.finish()

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
