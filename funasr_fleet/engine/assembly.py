"""Sentences found in FunASR's results → one ``Transcript`` (pure): speakers numbered, turns, warnings.

Shared by the one-call path (short audio) and the windowed path (long audio), so both give
transcripts of the same shape by the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from funasr_fleet.engine.clustering import Clustering
from funasr_fleet.engine.speaker_count import SpeakerCount, transcript_warnings
from funasr_fleet.engine.transcript import (
    ModelIdentity,
    Sentence,
    TranscribeOptions,
    Transcript,
    TranscriptWarning,
    WarningCode,
)
from funasr_fleet.engine.turns import absorb_noise_label, merge_turns, relabel_speakers

__all__ = ["build_transcript"]


def build_transcript(
    found: Sequence[Sentence],
    *,
    duration_ms: int,
    options: TranscribeOptions,
    count: SpeakerCount,
    diarized: bool,
    clustering: Clustering | None,
    model: ModelIdentity,
    gap_ms: int,
    max_pause_ms: int,
    wall_s: float,
) -> Transcript:
    """``found``: sentences in time order with cluster ids (any ints) or None as speakers.

    ``diarized``: whether speakers were clustered (``clustering``: that clustering, None when there
    were no speech windows); a diarization request on an engine without a speaker model gets a
    ``diarization_unavailable`` warning. Speakers are renumbered by first appearance.
    """
    sentences = relabel_speakers(absorb_noise_label(list(found)))
    turns = merge_turns(sentences, gap_ms=gap_ms, max_pause_ms=max_pause_ms)
    speakers = tuple(sorted({s.speaker for s in sentences if s.speaker is not None}))
    warnings: tuple[TranscriptWarning, ...] = ()
    if diarized:
        warnings = transcript_warnings(count, len(speakers), clustering)
    elif options.diarize and count.requested:
        warnings = (TranscriptWarning(WarningCode.DIARIZATION_UNAVAILABLE.value,
                    f"asked for {count.describe()}, but this engine has no speaker model"),)  # fmt: skip
    return Transcript(  # no_speech is added once per file (Engine.transcribe: with_no_speech)
        sentences=sentences,
        turns=turns,
        speakers=speakers,
        duration_ms=duration_ms,
        model=model,
        options=options,
        language=options.language,
        wall_s=wall_s,
        warnings=warnings,
    )


def with_no_speech(t: Transcript) -> Transcript:
    """``t`` with a ``no_speech`` warning when it holds no sentence: an empty success must say it is
    empty (silence, noise, music), not look like a transcript that lost its words."""
    if t.sentences or any(w.code == WarningCode.NO_SPEECH.value for w in t.warnings):
        return t
    seconds = t.duration_ms / 1000
    warning = TranscriptWarning(WarningCode.NO_SPEECH.value, f"no speech was found in {seconds:.1f} s of audio")
    return replace(t, warnings=(*t.warnings, warning))
