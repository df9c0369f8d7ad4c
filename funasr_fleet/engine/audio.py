"""Decode any audio/video file ONCE, with PyAV, to the float32 16 kHz mono array FunASR wants.

Why here and not inside FunASR: one decoder for every container (wav, mp3, m4a/aac, mp4/mov video,
flac, ogg/opus, webm), typed errors with stable codes instead of whatever a library raises, limits
checked before the expensive work, and bounded memory (one growing float32 buffer; a 45-minute file
is ~170 MB of samples, never a list of per-frame arrays).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from funasr_fleet.errors import AudioTooLong, AudioTooShort, EmptyAudio, NoAudioStream, UndecodableAudio
from funasr_fleet.logs import get_logger

SAMPLE_RATE = 16000
_MAX_DECODE_ERRORS = 50  # corrupt packets tolerated (skipped, like ffmpeg does) before giving up

log = get_logger(__name__)


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


@dataclass(frozen=True, slots=True)
class DecodedAudio:
    samples: np.ndarray = field(repr=False)  # float32, mono, 16 kHz, in [-1, 1]
    info: AudioInfo
    decode_s: float = 0.0

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def duration_ms(self) -> int:
        return int(round(len(self.samples) * 1000 / SAMPLE_RATE))

    @classmethod
    def from_array(cls, samples: np.ndarray, source: str = "array") -> DecodedAudio:
        """Wrap a float32 16 kHz mono array (validated) so it flows like a decoded file."""
        arr = np.asarray(samples)
        if arr.ndim != 1:
            raise UndecodableAudio(f"{source}: expected a 1-D mono array, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise UndecodableAudio(f"{source}: expected float samples at 16 kHz, got {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        info = AudioInfo(
            container="array", codec="pcm_f32le", sample_rate=SAMPLE_RATE, channels=1,
            duration_s=len(arr) / SAMPLE_RATE, size_bytes=arr.nbytes,
        )  # fmt: skip
        return cls(arr, info)


def _open(path: Path) -> Any:
    import av

    if not path.is_file():
        raise UndecodableAudio(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise EmptyAudio(f"{path.name}: the file is empty (0 bytes)")
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise UndecodableAudio(f"{path.name}: not a decodable media file ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc).strip() or exc.__class__.__name__
    return str(text)[:200]


def _info(container: Any, path: Path) -> AudioInfo:
    if not container.streams.audio:
        raise NoAudioStream(f"{path.name}: the file has no audio stream")
    stream = container.streams.audio[0]
    ctx = stream.codec_context
    duration: float | None = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    layout = getattr(ctx, "layout", None)
    channels = int(getattr(layout, "nb_channels", 0) or getattr(ctx, "channels", 0) or 0)
    return AudioInfo(
        container=str(container.format.name),
        codec=str(ctx.name),
        sample_rate=int(ctx.sample_rate or 0),
        channels=channels,
        duration_s=duration,
        size_bytes=path.stat().st_size,
        has_video=bool(container.streams.video),
    )


def probe(path: Path | str) -> AudioInfo:
    """Container metadata only (duration for deadlines, codec for logs); raises the typed errors."""
    path = Path(path)
    with _open(path) as container:
        return _info(container, path)


def decode(
    path: Path | str, *, min_audio_s: float = 0.0, max_audio_s: float | None = None
) -> DecodedAudio:
    """Decode the first audio stream to float32 16 kHz mono.

    Fails fast with ``AudioTooLong`` when the container's duration is already past the limit, and
    stops decoding as soon as the samples pass it (for containers that lie or do not say).
    """
    import av

    path = Path(path)
    start = time.perf_counter()
    with _open(path) as container:
        info = _info(container, path)
        if max_audio_s is not None and info.duration_s is not None and info.duration_s > max_audio_s + 0.5:
            raise AudioTooLong(f"{path.name}: {info.duration_s:.1f} s is longer than the maximum {max_audio_s:g} s")
        stream = container.streams.audio[0]
        stream.thread_type = "AUTO"
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        limit = None if max_audio_s is None else int((max_audio_s + 0.5) * SAMPLE_RATE)
        # sized from the metadata (capped: a header may lie), grown geometrically past that
        buf = _Buffer(int(min(info.duration_s or 60.0, 3600.0) * SAMPLE_RATE * 1.02) + SAMPLE_RATE)
        errors = 0
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:
                errors += 1
                if errors > _MAX_DECODE_ERRORS or not buf.size:
                    raise UndecodableAudio(f"{path.name}: broken media data ({_reason(exc)})") from None
                break  # demuxer cannot go on after real samples: keep what decoded (truncated upload)
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                errors += 1
                if errors > _MAX_DECODE_ERRORS:
                    raise UndecodableAudio(f"{path.name}: too many undecodable packets") from None
                continue
            for frame in frames:
                for out in resampler.resample(frame):
                    buf.append(out.to_ndarray().reshape(-1))
            if limit is not None and buf.size > limit:
                raise AudioTooLong(f"{path.name}: longer than the maximum {max_audio_s:g} s (stopped decoding)")
        for out in resampler.resample(None):
            buf.append(out.to_ndarray().reshape(-1))
    samples = buf.finish()
    if errors:
        log.warning("audio.decode_errors", file=path.name, skipped_packets=errors)
        info = _replace(info, decode_errors=errors)
    if samples.size == 0:
        if errors:
            raise UndecodableAudio(f"{path.name}: no packet could be decoded")
        raise EmptyAudio(f"{path.name}: the audio stream holds no samples")
    decoded = DecodedAudio(samples, info, decode_s=time.perf_counter() - start)
    check_length(decoded.duration_s, min_audio_s=min_audio_s, max_audio_s=max_audio_s, name=path.name)
    return decoded


def check_length(duration_s: float, *, min_audio_s: float, max_audio_s: float | None, name: str) -> None:
    if duration_s <= 0:
        raise EmptyAudio(f"{name}: the audio holds no samples")
    if duration_s < min_audio_s:
        raise AudioTooShort(f"{name}: {duration_s:.2f} s is shorter than the minimum {min_audio_s:g} s")
    if max_audio_s is not None and duration_s > max_audio_s:
        raise AudioTooLong(f"{name}: {duration_s:.1f} s is longer than the maximum {max_audio_s:g} s")


def _replace(info: AudioInfo, **changes: Any) -> AudioInfo:
    return AudioInfo(**{**asdict(info), **changes})


class _Buffer:
    """One float32 array grown geometrically: O(n) copies in total, no per-frame list kept."""

    def __init__(self, capacity: int) -> None:
        self._data = np.empty(max(capacity, SAMPLE_RATE), dtype=np.float32)
        self.size = 0

    def append(self, chunk: np.ndarray) -> None:
        end = self.size + len(chunk)
        if end > len(self._data):
            grown = np.empty(max(end, int(len(self._data) * 1.5)), dtype=np.float32)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size : end] = chunk
        self.size = end

    def finish(self) -> np.ndarray:
        if self.size == len(self._data):
            return self._data
        out = self._data[: self.size].copy() if self.size < len(self._data) // 2 else self._data[: self.size]
        self._data = np.empty(0, dtype=np.float32)
        return np.clip(out, -1.0, 1.0, out=out) if out.size else out
