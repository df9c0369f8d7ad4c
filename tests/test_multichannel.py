"""Merging per-channel transcripts into one timeline (pure; no model)."""

from __future__ import annotations

import pytest

from funasr_fleet.engine.multichannel import channel_options, merge_channels
from funasr_fleet.engine.pipeline import merge_turns
from funasr_fleet.engine.transcript import (
    ChannelUse,
    ModelIdentity,
    Sentence,
    TranscribeOptions,
    Transcript,
    TranscriptWarning,
)

MODEL = ModelIdentity("asr", "vad", "punc", "spk", "1.4.16", "cpu", "f" * 64)
SPLIT = ChannelUse("split", (0, 1))


def turns(sentences: tuple[Sentence, ...]):  # type: ignore[no-untyped-def]
    return merge_turns(sentences, gap_ms=1000, max_pause_ms=1000)


def part(*sentences: tuple[int, int, str, int | None], wall: float = 1.0, warnings: tuple = ()) -> Transcript:
    ss = tuple(Sentence(a, b, text, spk) for a, b, text, spk in sentences)
    speakers = tuple(sorted({s.speaker for s in ss if s.speaker is not None}))
    return Transcript(ss, turns(ss), speakers, 20_000, MODEL, wall_s=wall, warnings=warnings)


def test_two_channels_become_one_timeline_with_speaker_per_channel() -> None:
    agent = part((0, 2000, "hello", None), (5000, 7000, "sure", None))
    caller = part((2500, 4500, "hi there", None), (7200, 9000, "thanks", None))
    t = merge_channels([(1, caller), (0, agent)], channel_use=SPLIT, make_turns=turns)
    assert [s.text for s in t.sentences] == ["hello", "hi there", "sure", "thanks"]
    assert [s.speaker for s in t.sentences] == [0, 1, 0, 1]  # channel 0 is speaker 0 whatever the order given
    assert t.speakers == (0, 1) and t.speaker_channels == (0, 1)
    assert t.channel_use == SPLIT and t.wall_s == 2.0 and t.duration_ms == 20_000
    assert [(x.speaker, x.first_sentence, x.last_sentence) for x in t.turns] == [
        (0, 0, 0),
        (1, 1, 1),
        (0, 2, 2),
        (1, 3, 3),
    ]


def test_diarized_channels_keep_their_speakers_apart() -> None:
    ch0 = part((0, 1000, "a", 0), (1500, 2000, "b", 1), (3000, 4000, "c", 0))
    ch1 = part((500, 1200, "x", 0))
    t = merge_channels([(0, ch0), (1, ch1)], channel_use=SPLIT, make_turns=turns)
    assert t.speakers == (0, 1, 2) and t.speaker_channels == (0, 0, 1)
    assert [(s.text, s.speaker) for s in t.sentences] == [("a", 0), ("x", 2), ("b", 1), ("c", 0)]


def test_overlapping_speech_is_ordered_by_start_then_channel() -> None:
    t = merge_channels([(1, part((1000, 3000, "late", None))), (0, part((1000, 2000, "same", None)))],
                       channel_use=SPLIT, make_turns=turns)  # fmt: skip
    assert [s.text for s in t.sentences] == ["same", "late"]


def test_a_channel_without_sentences_gets_no_speaker() -> None:
    t = merge_channels([(0, part()), (1, part((0, 500, "only", None)))], channel_use=SPLIT, make_turns=turns)
    assert t.speakers == (0,) and t.speaker_channels == (1,) and t.sentences[0].speaker == 0
    empty = merge_channels([(0, part()), (1, part())], channel_use=SPLIT, make_turns=turns)
    assert empty.sentences == () and empty.speakers == () and empty.speaker_channels == () and empty.turns == ()


def test_warnings_and_options_are_carried() -> None:
    plan_w = TranscriptWarning("channel_silent", "channel 2 of 3 holds no usable signal: left out")
    own_w = TranscriptWarning("speaker_count_not_met", "x")
    opts = TranscribeOptions(num_speakers=2, channels="split")
    t = merge_channels([(0, part(warnings=(own_w,))), (1, part(warnings=(own_w,)))], channel_use=SPLIT,
                       make_turns=turns, warnings=(plan_w,), options=opts)  # fmt: skip
    assert t.warnings == (plan_w, own_w) and t.options == opts
    with pytest.raises(ValueError):
        merge_channels([], channel_use=SPLIT, make_turns=turns)


@pytest.mark.parametrize(
    ("options", "channels", "diarize"),
    [
        (TranscribeOptions(), 2, True),
        (TranscribeOptions(diarize=False), 2, False),
        (TranscribeOptions(num_speakers=2), 2, False),  # the channels are the two speakers
        (TranscribeOptions(num_speakers=3), 2, True),
        (TranscribeOptions(max_speakers=2), 3, False),
        (TranscribeOptions(min_speakers=4), 2, True),
    ],
)
def test_channel_options(options: TranscribeOptions, channels: int, diarize: bool) -> None:
    got = channel_options(options, channels)
    assert got.diarize is diarize
    assert got.num_speakers is None and got.min_speakers is None and got.max_speakers is None
    assert got.hotwords == options.hotwords and got.language == options.language
