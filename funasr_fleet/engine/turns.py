"""Who spoke each sentence, and turns (runs of one speaker): pure functions, integer milliseconds.

Turns follow the pause rule of ``sentences.py``: a turn is speech, so it never spans a pause
longer than the VAD's end-of-speech silence (``max_pause_ms``). ``turn_gap_s`` (``gap_ms``) can
only end turns earlier. A speaker who pauses longer and goes on gets a new turn of the same
speaker: a turn's single ``start_ms``/``end_ms`` span cannot have holes, and claiming the pause
would put silence into subtitles, RTTM-like uses of turns and talk time.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import replace

from funasr_fleet.engine.sentences import join_text
from funasr_fleet.engine.transcript import Sentence, Turn

__all__ = ["absorb_noise_label", "assign_speakers", "merge_turns", "relabel_speakers"]

SpeakerSegments = Sequence[tuple[int, int, int]]
"""Diarization segments ``[(start_ms, end_ms, speaker), ...]``. FunASR's ``postprocess`` (in
funasr/models/campplus/utils.py) gives ``[start_s, end_s, speaker]`` in seconds: multiply by 1000."""


def assign_speakers(sentences: Iterable[Sentence], speaker_segments: SpeakerSegments) -> list[Sentence]:
    """Give each sentence the speaker whose segments overlap its span most (summed per speaker;
    a tie goes to the lower speaker id). A sentence no segment overlaps keeps its speaker, or,
    when it has none, takes the nearest segment's. No segments: sentences unchanged.

    This is the intent of FunASR's ``distribute_spk`` (which counts some overlaps twice), applied
    to the pieces that ``split_at_pauses`` made: a piece may belong to another speaker than the
    punctuation sentence it came from.
    """
    segs = sorted((int(s), int(e), int(k)) for s, e, k in speaker_segments if e > s)
    if not segs:
        return list(sentences)
    starts = [s for s, _, _ in segs]
    longest = max(e - s for s, e, _ in segs)
    out = []
    for sentence in sentences:
        a, b = sentence.start_ms, sentence.end_ms
        overlap: dict[int, int] = {}
        j = bisect.bisect_left(starts, a - longest)
        while j < len(segs) and segs[j][0] < b:
            s, e, k = segs[j]
            if min(b, e) > max(a, s):
                overlap[k] = overlap.get(k, 0) + min(b, e) - max(a, s)
            j += 1
        if overlap:
            speaker: int | None = min(overlap, key=lambda k: (-overlap[k], k))
        elif sentence.speaker is not None:
            speaker = sentence.speaker
        else:
            speaker = min(segs, key=lambda g: (max(g[0] - b, a - g[1], 0), g[2]))[2]
        out.append(sentence if speaker == sentence.speaker else replace(sentence, speaker=speaker))
    return out


def absorb_noise_label(sentences: list[Sentence]) -> list[Sentence]:
    """HDBSCAN (FunASR's clusterer past ~25 min of speech) labels outliers -1; that is not a
    speaker. Such a sentence takes its neighbour's speaker (previous, else next, else 0)."""
    if not any(s.speaker is not None and s.speaker < 0 for s in sentences):
        return sentences
    out = list(sentences)
    last: int | None = None
    for i, s in enumerate(out):
        if s.speaker is not None and s.speaker < 0:
            if last is None:
                last = next((t.speaker for t in out[i:] if t.speaker is not None and t.speaker >= 0), 0)
            out[i] = replace(s, speaker=last)
        elif s.speaker is not None:
            last = s.speaker
    return out


def relabel_speakers(sentences: Iterable[Sentence]) -> tuple[Sentence, ...]:
    """Number speakers by first appearance (0, 1, ...): cluster ids are arbitrary, order is not."""
    mapping: dict[int, int] = {}
    out = []
    for s in sentences:
        if s.speaker is None:
            out.append(s)
            continue
        new = mapping.setdefault(s.speaker, len(mapping))
        out.append(s if new == s.speaker else replace(s, speaker=new))
    return tuple(out)


def merge_turns(sentences: Sequence[Sentence], *, gap_ms: int, max_pause_ms: int) -> tuple[Turn, ...]:
    """Consecutive sentences (in the given order) of one speaker become one turn while the pause
    between them is under ``gap_ms`` and not over ``max_pause_ms``. A turn spans its first
    sentence's start to its latest sentence end; ``first_sentence``/``last_sentence`` index
    ``sentences``; its text is the sentences' texts joined (``join_text``)."""
    turns: list[Turn] = []
    for i, s in enumerate(sentences):
        last = turns[-1] if turns else None
        pause = s.start_ms - last.end_ms if last is not None else 0
        if last is not None and last.speaker == s.speaker and pause < gap_ms and pause <= max_pause_ms:
            turns[-1] = Turn(
                speaker=last.speaker,
                start_ms=last.start_ms,
                end_ms=max(last.end_ms, s.end_ms),
                text=join_text([last.text, s.text]),
                first_sentence=last.first_sentence,
                last_sentence=i,
            )
        else:
            turns.append(Turn(s.speaker, s.start_ms, s.end_ms, s.text, i, i))
    return tuple(turns)
