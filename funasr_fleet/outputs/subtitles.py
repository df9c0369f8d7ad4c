"""The SRT and VTT writers: one cue per sentence with text, speaker-labelled when diarized."""

from __future__ import annotations

from collections.abc import Iterator

from funasr_fleet.engine.transcript import Transcript, speaker_label
from funasr_fleet.outputs.lines import batched, clock, one_line, span
from funasr_fleet.outputs.meta import OutputMeta


def _cues(transcript: Transcript) -> Iterator[tuple[int, int, int, str, int | None]]:
    """(number, start, end, one-line text, speaker) for every sentence with text."""
    n = 0
    for s in transcript.sentences:
        text = one_line(s.text)
        if not text:
            continue
        n += 1
        start, end = span(s)
        yield n, start, end, text, s.speaker


def render_srt(transcript: Transcript, meta: OutputMeta) -> Iterator[str]:
    """SubRip: numbered cues, ``HH:MM:SS,mmm`` times, ``Speaker N:`` prefix when diarized."""

    def lines() -> Iterator[str]:
        for n, start, end, text, spk in _cues(transcript):
            prefix = "" if spk is None else f"{speaker_label(spk)}: "
            yield f"{n}\n{clock(start, ',')} --> {clock(end, ',')}\n{prefix}{text}\n\n"

    yield from batched(lines())


def _vtt_escape(text: str) -> str:
    # '&' first; '>' too, so no cue text can contain the '-->' separator.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_vtt(transcript: Transcript, meta: OutputMeta) -> Iterator[str]:
    """WebVTT: ``WEBVTT`` header, numbered cues, ``<v Speaker N>`` voice tags when diarized."""
    yield "WEBVTT\n\n"

    def lines() -> Iterator[str]:
        for n, start, end, text, spk in _cues(transcript):
            voice = "" if spk is None else f"<v {speaker_label(spk)}>"
            yield f"{n}\n{clock(start, '.')} --> {clock(end, '.')}\n{voice}{_vtt_escape(text)}\n\n"

    yield from batched(lines())
