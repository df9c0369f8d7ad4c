"""Decode any audio/video file ONCE, with PyAV, to 16 kHz samples staged on disk (``AudioSource``).

Why here and not inside FunASR: one decoder for every container (wav, mp3, m4a/aac, mp4/mov video,
flac, ogg/opus, webm), typed errors with stable codes instead of whatever a library raises, limits
checked before the expensive work, the channels kept apart (``engine/channels.py`` decides what to
do with them), and memory that does not grow with duration: samples stream through a 2-second
buffer into a temporary int16 file (``engine/source.py``).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from funasr_fleet.engine.source import MAX_CHANNELS, SAMPLE_RATE, AudioInfo, AudioSource, DecodedAudio, PcmWriter
from funasr_fleet.errors import (
    AudioTooLong,
    AudioTooShort,
    EmptyAudio,
    NoAudioStream,
    TooManyChannels,
    UndecodableAudio,
)
from funasr_fleet.logs import get_logger

__all__ = [
    "MAX_CHANNELS", "SAMPLE_RATE", "AudioInfo", "AudioSource", "DecodedAudio", "check_length", "decode", "probe",
]  # fmt: skip

_MAX_DECODE_ERRORS = 50  # corrupt packets tolerated (skipped, like ffmpeg does) before giving up

log = get_logger(__name__)


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
    path: Path | str,
    *,
    min_audio_s: float = 0.0,
    max_audio_s: float | None = None,
    tmp_dir: Path | str | None = None,
) -> AudioSource:
    """Decode the first audio stream to 16 kHz, every channel kept, staged in a temporary file.

    ``tmp_dir``: where the int16 samples are staged (default: the system temp dir); costs
    115 MB per audio hour per channel. The caller owns the result: ``close()`` it (or ``with``)
    to free the disk space; garbage collection and process exit free it too.

    Raises ``AudioTooLong`` at once when the container's duration is already past the limit, and
    as soon as the decoded samples pass it (containers that lie or do not say); ``TooManyChannels``
    past 8 channels; ``UndecodableAudio``/``NoAudioStream``/``EmptyAudio``/``AudioTooShort``.
    Up to 50 corrupt packets are skipped (counted in ``info.decode_errors``).
    """
    import av

    path = Path(path)
    start = time.perf_counter()
    writer: PcmWriter | None = None
    try:
        with _open(path) as container:
            info = _info(container, path)
            if max_audio_s is not None and info.duration_s is not None and info.duration_s > max_audio_s + 0.5:
                raise AudioTooLong(f"{path.name}: {info.duration_s:.1f} s is longer than the maximum {max_audio_s:g} s")
            _check_channels(info.channels, path.name)
            stream = container.streams.audio[0]
            stream.thread_type = "AUTO"
            convert = _Converter()
            limit = None if max_audio_s is None else int((max_audio_s + 0.5) * SAMPLE_RATE)
            errors = 0
            packets = container.demux(stream)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.error.FFmpegError as exc:
                    errors += 1
                    if errors > _MAX_DECODE_ERRORS or writer is None or not writer.pending:
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
                    for block in convert(frame):
                        if writer is None:
                            _check_channels(block.shape[1], path.name)
                            writer = PcmWriter(block.shape[1], tmp_dir)
                        writer.append(block)
                if limit is not None and writer is not None and writer.pending > limit:
                    raise AudioTooLong(f"{path.name}: longer than the maximum {max_audio_s:g} s (stopped decoding)")
            for block in convert(None):
                if writer is not None:
                    writer.append(block)
        if writer is None or not writer.pending:
            if errors:
                raise UndecodableAudio(f"{path.name}: no packet could be decoded")
            raise EmptyAudio(f"{path.name}: the audio stream holds no samples")
        store, stats = writer.finish()
        writer = None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if errors:
        log.warning("audio.decode_errors", file=path.name, skipped_packets=errors)
        info = _replace(info, decode_errors=errors)
    source = AudioSource(store, info, stats, decode_s=time.perf_counter() - start)
    try:
        check_length(source.duration_s, min_audio_s=min_audio_s, max_audio_s=max_audio_s, name=path.name)
    except BaseException:
        source.close()
        raise
    return source


def _check_channels(channels: int, name: str) -> None:
    if channels > MAX_CHANNELS:
        raise TooManyChannels(f"{name}: {channels} audio channels; at most {MAX_CHANNELS} are supported")


class _Converter:
    """Decoded frames → float32 ``(n, channels)`` blocks at 16 kHz, channels kept as the first frame has them.

    A stream whose format, layout or rate changes midway (concatenated files, some AAC streams)
    gets a fresh resampler to the same output layout instead of an error.
    """

    def __init__(self) -> None:
        self._resampler: Any = None
        self._key: tuple[str, str, int] | None = None
        self._layout: Any = None
        self._channels = 0

    def __call__(self, frame: Any) -> list[np.ndarray]:
        import av

        if frame is None:
            return self._drain()
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        out: list[np.ndarray] = []
        if self._resampler is None or key != self._key:
            if self._resampler is not None:
                out += self._drain()
            if self._layout is None:
                self._layout, self._channels = frame.layout, frame.layout.nb_channels
            self._resampler = av.AudioResampler(format="flt", layout=self._layout, rate=SAMPLE_RATE)
            self._key = key
        out += [self._array(o) for o in self._resampler.resample(frame)]
        return out

    def _drain(self) -> list[np.ndarray]:
        if self._resampler is None:
            return []
        blocks = [self._array(o) for o in self._resampler.resample(None)]
        self._resampler = None
        return blocks

    def _array(self, frame: Any) -> np.ndarray:
        return frame.to_ndarray().reshape(-1, self._channels)  # packed "flt": interleaved samples


def check_length(duration_s: float, *, min_audio_s: float, max_audio_s: float | None, name: str) -> None:
    """Raises ``EmptyAudio`` / ``AudioTooShort`` / ``AudioTooLong`` for a decoded duration (seconds)."""
    if duration_s <= 0:
        raise EmptyAudio(f"{name}: the audio holds no samples")
    if duration_s < min_audio_s:
        raise AudioTooShort(f"{name}: {duration_s:.2f} s is shorter than the minimum {min_audio_s:g} s")
    if max_audio_s is not None and duration_s > max_audio_s:
        raise AudioTooLong(f"{name}: {duration_s:.1f} s is longer than the maximum {max_audio_s:g} s")


def _replace(info: AudioInfo, **changes: Any) -> AudioInfo:
    return AudioInfo(**{**asdict(info), **changes})
