"""Text and time pieces the line-based writers share: one-line cue text, clocks, spans, batched chunks."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from funasr_fleet.engine.transcript import Sentence, Turn

BATCH = 256  # items per yielded chunk: big enough to be cheap, small enough to stream

_LINE_BREAKS = re.compile(r"\s*[\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]+\s*")


def one_line(text: str) -> str:
    """Cue text on one line: line breaks would end a cue (SRT/VTT) or a record (TXT/RTTM)."""
    return _LINE_BREAKS.sub(" ", text).strip()


def clock(ms: int, frac_sep: str | None) -> str:
    """HH:MM:SS[<sep>mmm]; hours keep counting past 99 (no wrap at 24 h)."""
    ms = max(0, int(ms))
    hours, rem = divmod(ms, 3_600_000)
    minutes, rem = divmod(rem, 60_000)
    seconds, millis = divmod(rem, 1000)
    base = f"{hours:02d}:{minutes:02d}:{seconds:02d}"
    return base if frac_sep is None else f"{base}{frac_sep}{millis:03d}"


def seconds(ms: int) -> str:
    """Integer milliseconds as exact decimal seconds (no float rounding): 1234 -> '1.234'."""
    ms = max(0, int(ms))
    return f"{ms // 1000}.{ms % 1000:03d}"


def span(sentence: Sentence | Turn) -> tuple[int, int]:
    """(start, end) clamped so players never see a negative time or an end before the start."""
    start = max(0, int(sentence.start_ms))
    return start, max(start, int(sentence.end_ms))


def batched(lines: Iterable[str], size: int = BATCH) -> Iterator[str]:
    """``lines`` joined into chunks of ``size`` lines each (the last one shorter)."""
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= size:
            yield "".join(batch)
            batch.clear()
    if batch:
        yield "".join(batch)
