"""The TXT writer: one ``[HH:MM:SS] Speaker N: text`` line per turn (or per sentence without turns)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from funasr_fleet.engine.transcript import Sentence, Transcript, Turn, speaker_label
from funasr_fleet.outputs.lines import batched, clock, one_line, span
from funasr_fleet.outputs.meta import OutputMeta


def render_txt(transcript: Transcript, meta: OutputMeta) -> Iterator[str]:
    """Plain text: turns when diarized, else sentences; units without text are skipped."""
    units: Iterable[Turn | Sentence] = transcript.turns or transcript.sentences

    def lines() -> Iterator[str]:
        for unit in units:
            text = one_line(unit.text)
            if not text:
                continue
            prefix = "" if unit.speaker is None else f"{speaker_label(unit.speaker)}: "
            yield f"[{clock(span(unit)[0], None)}] {prefix}{text}\n"

    yield from batched(lines())
