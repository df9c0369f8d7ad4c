"""Speakers of a windowed recording: embeddings kept per window, ONE clustering at the end.

While a window runs, ``EmbeddingCollector`` stands in for FunASR's clustering backend (``cb_model``):
it answers with placeholder labels and keeps what FunASR hands its ``postprocess``: the CAM++
window embeddings ``(N, 192)`` and their times (1.5 s chunks every 0.75 s inside each VAD
segment, seconds from the window's start). FunASR's sentences of that window are remembered by
their spans. After the last window, ``assign_speakers_to_windows`` clusters all embeddings at once
(``clustering.cluster_speakers``: bounded at any length) and gives each window's sentences their
speakers with FunASR's own ``postprocess`` (merge, overlap split, 0.7 s smoothing) and
``distribute_spk``, exactly the steps of FunASR's one-call path, so labels are consistent across
the whole file. Memory per audio hour: ~4,800 embeddings × 192 float32 = 3.7 MB, plus their times.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from funasr_fleet.engine.clustering import Clustering, cluster_speakers
from funasr_fleet.engine.speaker_count import SpeakerCount

__all__ = ["EmbeddingCollector", "WindowSpeakers", "assign_speakers_to_windows", "speaker_segments"]


@dataclass(slots=True)
class WindowSpeakers:
    """What one window leaves for the final clustering.

    ``chunks``: (start_s, end_s) of each embedding, window-relative; ``embeddings``: (N, D) float32
    (N = len(chunks)), or None when FunASR computed none (no text in the window); ``items``:
    (start_ms, end_ms) of FunASR's sentences, window-relative, in ``sentence_info`` order.
    """

    chunks: list[tuple[float, float]] = field(default_factory=list)
    embeddings: np.ndarray | None = None
    items: list[tuple[int, int]] = field(default_factory=list)


class EmbeddingCollector:
    """FunASR's ``cb_model`` for one window: keeps the embeddings and their chunk times, clusters nothing.

    Use ``with collector.installed(model): model.generate(...)`` then ``take()``. Not thread-safe
    (neither is AutoModel).
    """

    def __init__(self) -> None:
        self._chunks: list[tuple[float, float]] | None = None
        self._embeddings: np.ndarray | None = None

    def __call__(self, embeddings: Any, oracle_num: int | None = None, **_: object) -> np.ndarray:
        return np.zeros(len(embeddings), dtype=np.int64)  # placeholders: the real labels come at the end

    @contextlib.contextmanager
    def installed(self, model: Any) -> Iterator[EmbeddingCollector]:
        """Put this collector in ``model.cb_model`` and watch FunASR's ``postprocess`` (whose input
        holds the chunk times) for the duration of the block."""
        with contextlib.redirect_stdout(sys.stderr):
            import funasr.auto.auto_model as auto_model
        original = auto_model.postprocess

        def capture(segments: list[Any], vad_segments: Any, labels: Any, embeddings: Any, **kwargs: Any) -> Any:
            self._chunks = [(float(s[0]), float(s[1])) for s in segments]
            self._embeddings = np.array(embeddings, dtype=np.float32)
            return original(segments, vad_segments, labels, embeddings, **kwargs)

        self._chunks, self._embeddings = None, None
        saved = model.cb_model
        auto_model.postprocess, model.cb_model = capture, self
        try:
            yield self
        finally:
            auto_model.postprocess, model.cb_model = original, saved

    def take(self) -> tuple[list[tuple[float, float]], np.ndarray | None]:
        """The chunk times and embeddings of the last window (empty, None when none were computed)."""
        chunks, embeddings = self._chunks or [], self._embeddings
        self._chunks, self._embeddings = None, None
        if embeddings is not None and len(embeddings) != len(chunks):
            raise RuntimeError(f"FunASR gave {len(embeddings)} embeddings for {len(chunks)} chunks")
        return chunks, embeddings


def assign_speakers_to_windows(
    windows: Sequence[WindowSpeakers], count: SpeakerCount, *, max_dense: int = 2048, seed: int = 0
) -> tuple[list[list[int]], Clustering | None]:
    """One clustering over every window's embeddings; returns each window's sentence speakers
    (parallel to ``items``; global cluster ids) and the clustering (None: no embeddings at all).

    A window without embeddings gives its sentences speaker 0 (FunASR's own default).
    """
    parts = [w.embeddings for w in windows if w.embeddings is not None and len(w.embeddings)]
    if not parts:
        return [[0] * len(w.items) for w in windows], None
    clustering = cluster_speakers(np.concatenate(parts), count, max_dense=max_dense, seed=seed)
    with contextlib.redirect_stdout(sys.stderr):
        from funasr.models.campplus.utils import distribute_spk
    out: list[list[int]] = []
    pos = 0
    for w in windows:
        n = 0 if w.embeddings is None else len(w.embeddings)
        if not n:
            out.append([0] * len(w.items))
            continue
        segments = speaker_segments(w.chunks, clustering.labels[pos : pos + n])
        pos += n
        sentences = [{"start": s, "end": e} for s, e in w.items]
        distribute_spk(sentences, segments)
        out.append([int(d["spk"]) for d in sentences])
    return out, clustering


def speaker_segments(chunks: Sequence[tuple[float, float]], labels: np.ndarray) -> list[list[Any]]:
    """FunASR's ``postprocess`` of chunk labels into ``[[start_s, end_s, speaker], ...]``, with the
    given (global) speaker ids: ``postprocess`` renumbers labels by first appearance, undone here."""
    with contextlib.redirect_stdout(sys.stderr):
        from funasr.models.campplus.utils import postprocess
    rows = [[s, e, None] for s, e in chunks]
    original = list(dict.fromkeys(int(v) for v in labels))  # renumbered id k was original[k]
    return [[s, e, original[int(k)]] for s, e, k in postprocess(rows, None, np.asarray(labels), None)]
