"""Long audio in bounded windows: VAD, ASR and punctuation window by window, speakers clustered once.

Memory stays bounded by the window, not the recording: each window's samples are read from the
``AudioSource`` (int16 on disk) into one float32 array of at most ``window_s`` (+2 s) and handed to
FunASR's one-call pipeline; what is kept between windows is the sentences found so far and, when
diarizing, the speaker embeddings and their times (``window_speakers.py``): ~4 MB per audio hour.

Cuts: for a window starting at ``start``, the VAD runs over the last ``LOOKBACK_S`` (30 s) of the
window; the cut is the middle of the latest silence there (``windows.choose_cut``). No silence in
30 s: the VAD looks at the last half of the window. None there either (half a window of unbroken
speech, which the VAD's own 60 s segment limit makes rare): the window is cut at its end and a
warning is logged. Extra VAD cost: 30 s per window (10 % of the VAD's work at 300 s windows).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

import numpy as np

from funasr_fleet.engine.clustering import Clustering
from funasr_fleet.engine.sentences import sentences_from_result
from funasr_fleet.engine.speaker_count import SpeakerCount
from funasr_fleet.engine.transcript import Sentence, TranscribeOptions
from funasr_fleet.engine.window_speakers import EmbeddingCollector, WindowSpeakers, assign_speakers_to_windows
from funasr_fleet.engine.windows import SAMPLES_PER_MS, Window, choose_cut, clamp_stop, shift_result
from funasr_fleet.logs import get_logger

__all__ = ["LOOKBACK_S", "Progress", "Reader", "WindowBackend", "transcribe_windows"]

LOOKBACK_S = 30.0
Reader = Callable[[int, int], np.ndarray]
"""``read(start, stop)``: samples ``[start, stop)`` as float32 mono."""
Progress = Callable[[float], None]
"""``progress(fraction)``: called after each window with the fraction of the audio done (0..1]."""

log = get_logger(__name__)


class WindowBackend(Protocol):
    """What the windowed run needs from the engine (``Engine`` implements it)."""

    def generate_window(
        self, samples: np.ndarray, options: TranscribeOptions, collector: EmbeddingCollector | None
    ) -> dict[str, Any]: ...

    def speech_segments(self, samples: np.ndarray) -> list[list[int]]: ...


def transcribe_windows(
    backend: WindowBackend,
    read: Reader,
    num_samples: int,
    options: TranscribeOptions,
    *,
    count: SpeakerCount,
    diarized: bool,
    window_s: float,
    max_pause_ms: int,
    progress: Progress | None = None,
    max_dense: int = 2048,
    seed: int = 0,
) -> tuple[list[Sentence], Clustering | None]:
    """Sentences of the whole recording (time order; speakers: global cluster ids, or None when not
    ``diarized``) and the one clustering (None: not diarized or no speech windows).

    Errors of the backend propagate, and so does any exception ``progress`` raises (how a caller
    cancels between windows).
    """
    window = int(window_s * 1000) * SAMPLES_PER_MS
    duration_ms = round(num_samples / SAMPLES_PER_MS)
    collector = EmbeddingCollector() if diarized else None
    found: list[list[Sentence]] = []
    kept: list[WindowSpeakers] = []
    start, index = 0, 0
    while start < num_samples:
        t0 = time.perf_counter()
        stop = num_samples if num_samples - start <= window else _cut(backend, read, start, window, num_samples)
        w = Window(index, start, stop)
        raw = backend.generate_window(read(start, stop), options, collector)
        if collector is not None:
            chunks, embeddings = collector.take()
            items = raw.get("sentence_info") or []
            kept.append(
                WindowSpeakers(chunks, embeddings, [(int(i.get("start", 0)), int(i.get("end", 0))) for i in items])
            )
            for k, item in enumerate(items):
                item["spk"] = k  # placeholder: the sentence's index, replaced after the clustering
        shift_result(raw, w.offset_ms)
        found.append(sentences_from_result(raw, duration_ms, diarized=diarized, max_pause_ms=max_pause_ms))
        log.info("engine.window", index=index, start_s=round(start / 16000, 3), stop_s=round(stop / 16000, 3),
                 sentences=len(found[-1]), wall_s=round(time.perf_counter() - t0, 2))  # fmt: skip
        if progress is not None:
            progress(stop / num_samples)
        start, index = stop, index + 1
    if collector is None:
        return [s for part in found for s in part], None
    speakers, clustering = assign_speakers_to_windows(kept, count, max_dense=max_dense, seed=seed)
    sentences = [
        replace(s, speaker=labels[s.speaker] if s.speaker is not None and s.speaker < len(labels) else 0)
        for part, labels in zip(found, speakers, strict=False)
        for s in part
    ]
    return sentences, clustering


def _cut(backend: WindowBackend, read: Reader, start: int, window: int, num_samples: int) -> int:
    """The stop of the window from ``start``: in the latest silence the VAD finds near its end."""
    end = start + window
    for look_s in (LOOKBACK_S, window / SAMPLES_PER_MS / 1000 / 2):
        look = min(int(look_s * 1000) * SAMPLES_PER_MS, window)
        region = end - look
        cut_ms = choose_cut(backend.speech_segments(read(region, end)), look // SAMPLES_PER_MS)
        if cut_ms is not None:
            return clamp_stop(start, region + cut_ms * SAMPLES_PER_MS, num_samples)
    log.warning("engine.window_cut_in_speech", start_s=round(start / 16000, 3), window_s=window / 16000)
    return clamp_stop(start, end, num_samples)
