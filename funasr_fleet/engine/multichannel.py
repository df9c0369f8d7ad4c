"""Channels transcribed on their own → one transcript (pure): ``merge_channels``, ``channel_options``.

Speaker = channel: every channel that produced sentences gets its own speakers, numbered channel
by channel (channel 0's first, then channel 1's, ...; inside a channel by first appearance), so
an agent on channel 0 is SPEAKER_00 in every call. ``Transcript.speaker_channels`` says which
channel each speaker came from. Sentences of all channels form one timeline ordered by time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from funasr_fleet.engine.transcript import ChannelUse, Sentence, TranscribeOptions, Transcript, TranscriptWarning, Turn

TurnMaker = Callable[[tuple[Sentence, ...]], tuple[Turn, ...]]


def channel_options(options: TranscribeOptions, channels: int) -> TranscribeOptions:
    """Options for transcribing ONE of ``channels`` split channels.

    A speaker count describes the whole recording, not a channel, so it is not passed on. When the
    channels alone already give the count asked for (``num_speakers`` or ``max_speakers`` ≤ the
    number of channels), no channel is diarized: each channel is one speaker.
    """
    cap = options.num_speakers if options.num_speakers is not None else options.max_speakers
    diarize = options.diarize and not (cap is not None and cap <= channels)
    return replace(options, diarize=diarize, num_speakers=None, min_speakers=None, max_speakers=None)


def merge_channels(
    parts: Sequence[tuple[int, Transcript]],
    *,
    channel_use: ChannelUse,
    make_turns: TurnMaker,
    options: TranscribeOptions | None = None,
    warnings: tuple[TranscriptWarning, ...] = (),
) -> Transcript:
    """Merge per-channel transcripts ``(channel, transcript)`` into one.

    Each part's speakers are its own diarization (0..k-1) or None (not diarized: the whole
    channel is one speaker). ``make_turns`` groups the merged sentences into turns (the engine's
    ``merge_turns``). Warnings: ``warnings`` first, then the parts' own (each once). ``options``:
    what the caller asked for (default: the first part's). The result's ``wall_s`` is the parts'
    sum, ``duration_ms`` the longest part's. Raises ValueError
    when ``parts`` is empty.
    """
    if not parts:
        raise ValueError("merge_channels needs at least one channel")
    tagged: list[tuple[int, int, int, int, Sentence]] = []  # (start, end, channel, order, sentence)
    speaker_channels: list[int] = []
    for channel, transcript in sorted(parts, key=lambda p: p[0]):
        mapping: dict[int | None, int] = {}
        for order, s in enumerate(transcript.sentences):
            if s.speaker not in mapping:
                mapping[s.speaker] = len(speaker_channels)
                speaker_channels.append(channel)
            tagged.append((s.start_ms, s.end_ms, channel, order, replace(s, speaker=mapping[s.speaker])))
    tagged.sort(key=lambda t: t[:4])
    carried = [w for _, t in sorted(parts, key=lambda p: p[0]) for w in t.warnings]
    merged_warnings = tuple(dict.fromkeys([*warnings, *carried]))  # a channel's own warnings too, once each
    sentences = tuple(t[4] for t in tagged)
    first = parts[0][1]
    return Transcript(
        sentences=sentences,
        turns=make_turns(sentences),
        speakers=tuple(range(len(speaker_channels))),
        duration_ms=max(t.duration_ms for _, t in parts),
        model=first.model,
        options=options if options is not None else first.options,
        language=first.language,
        wall_s=sum(t.wall_s for _, t in parts),
        decode_s=first.decode_s,
        warnings=merged_warnings,
        channel_use=channel_use,
        speaker_channels=tuple(speaker_channels),
    )
