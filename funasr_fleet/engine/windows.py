"""Where a long recording is cut into windows, and moving a window's result onto the recording's clock (pure).

A window is ``[start, stop)`` in samples (16 kHz). Every cut lies in a silence that the VAD found
between two speech segments, so no word is ever split between two windows: ``choose_cut`` picks the
latest such silence in the tail of the window. All cuts are whole milliseconds (multiples of 16
samples), so a window's times shift onto the recording's clock exactly (``shift_result``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SAMPLES_PER_MS = 16  # 16 kHz
MIN_GAP_MS = 200  # a silence shorter than this is not trusted as a cut point (VAD edges are padded)
EDGE_GUARD_MS = 300  # an open-ended silence at a region's edge: keep this far from the unknown side
MIN_LAST_WINDOW_S = 2.0  # a remainder shorter than this joins the window before it (no stub windows)

Segments = Sequence[Sequence[int]]
"""VAD speech segments ``[[start_ms, end_ms], ...]`` relative to the region the VAD saw."""


@dataclass(frozen=True, slots=True)
class Window:
    """One window: samples ``[start, stop)`` of the recording; ``index`` counts from 0."""

    index: int
    start: int
    stop: int

    @property
    def offset_ms(self) -> int:
        return self.start // SAMPLES_PER_MS


def choose_cut(segments: Segments, region_ms: int) -> int | None:
    """The cut point (ms from the region start) in the latest silence of a region of ``region_ms``.

    ``segments``: the VAD's speech segments in that region. Candidates: every silence between two
    segments of at least ``MIN_GAP_MS``, and the trailing silence after the last segment (its end
    kept ``EDGE_GUARD_MS`` away from the region's end: speech may start just beyond it). A region
    without speech is cut in its middle. The cut is the middle of the latest candidate; None when
    there is none (the region is speech from end to end).
    """
    spans = sorted((int(s), int(e)) for s, e in segments if int(e) > int(s))
    if not spans:
        return region_ms // 2 if region_ms > 2 * EDGE_GUARD_MS else None
    last_end = max(e for _, e in spans)
    trailing = (last_end, region_ms - EDGE_GUARD_MS)
    if trailing[1] - trailing[0] >= MIN_GAP_MS:
        return (trailing[0] + trailing[1]) // 2
    reach = spans[0][1]
    best: tuple[int, int] | None = None
    for s, e in spans[1:]:
        if s - reach >= MIN_GAP_MS:
            best = (reach, s)
        reach = max(reach, e)
    return None if best is None else (best[0] + best[1]) // 2


def clamp_stop(start: int, cut: int, num_samples: int) -> int:
    """The window's stop for a cut at sample ``cut``: whole milliseconds, and the whole rest of the
    audio when less than ``MIN_LAST_WINDOW_S`` would remain after it."""
    cut -= cut % SAMPLES_PER_MS
    cut = max(cut, start + SAMPLES_PER_MS)
    if num_samples - cut < MIN_LAST_WINDOW_S * SAMPLES_PER_MS * 1000:
        return num_samples
    return cut


def shift_result(raw: dict[str, Any], offset_ms: int) -> dict[str, Any]:
    """A FunASR ``generate`` result moved ``offset_ms`` later: ``timestamp`` pairs and every
    ``sentence_info`` item's ``start``/``end``/``timestamp``. Changes ``raw`` in place; returns it."""
    if not offset_ms:
        return raw
    done: set[int] = set()  # FunASR's sentences share their [start, end] lists with ``timestamp``: shift each once
    _shift_stamps(raw.get("timestamp"), offset_ms, done)
    for item in raw.get("sentence_info") or []:
        for key in ("start", "end"):
            if key in item:
                item[key] = int(item[key]) + offset_ms
        _shift_stamps(item.get("timestamp"), offset_ms, done)
    return raw


def _shift_stamps(stamps: Any, offset_ms: int, done: set[int]) -> None:
    for pair in stamps or []:
        if isinstance(pair, list) and len(pair) >= 2 and id(pair) not in done:
            done.add(id(pair))
            pair[0] = int(pair[0]) + offset_ms
            pair[1] = int(pair[1]) + offset_ms
