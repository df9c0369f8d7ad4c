"""Pure unit tests of the pause rule (engine/sentences.py) and turns/speakers (engine/turns.py)."""

from __future__ import annotations

import itertools
import random

import pytest

from funasr_fleet.engine.sentences import (
    join_text,
    sentences_from_result,
    split_at_pauses,
    split_sentences,
    text_units,
    tokens_from_stamps,
)
from funasr_fleet.engine.transcript import Sentence, Token
from funasr_fleet.engine.turns import absorb_noise_label, assign_speakers, merge_turns, relabel_speakers

PAUSE = 800  # engine.max_end_silence_ms default


def toks(*spec: tuple[str, int, int]) -> tuple[Token, ...]:
    return tuple(Token(t, s, e) for t, s, e in spec)


def spans(pieces: list[Sentence]) -> list[tuple[int, int, str]]:
    return [(p.start_ms, p.end_ms, p.text) for p in pieces]


# --- units and joining ---------------------------------------------------------------------------
def test_text_units_and_join_text() -> None:
    assert text_units("你好, big world。") == ["你", "好", "big", "world"]
    assert text_units("FunASR 的 Paraformer！") == ["FunASR", "的", "Paraformer"]
    assert text_units("。，") == []
    assert join_text(["你", "好", "big", "world", "。"]) == "你好 big world。"
    assert join_text(["Hello,", " ", "world"]) == "Hello, world"


def test_tokens_from_stamps_pairs_units_or_gives_up() -> None:
    assert tokens_from_stamps("你好。", [[0, 100], [100, 250]], 200) == toks(("你", 0, 100), ("好", 100, 200))
    assert tokens_from_stamps("你好。", [[0, 100]], 1000) == ()  # off by one: caller falls back
    assert tokens_from_stamps("", [], 1000) == ()


# --- splitting -----------------------------------------------------------------------------------
def test_cjk_sentence_splits_at_a_long_pause_keeping_punctuation() -> None:
    s = Sentence(
        0, 2300, "你好，世界。", 1, toks(("你", 0, 100), ("好", 100, 200), ("世", 2000, 2100), ("界", 2100, 2200))
    )
    pieces = split_at_pauses(s, max_pause_ms=PAUSE)
    assert spans(pieces) == [(0, 200, "你好，"), (2000, 2200, "世界。")]
    assert [p.speaker for p in pieces] == [1, 1]
    assert [len(p.tokens) for p in pieces] == [2, 2]


def test_words_split_with_their_spaces_and_marks() -> None:
    s = Sentence(
        0, 5000, "Hello, big world.", None, toks(("Hello", 0, 300), ("big", 1500, 1700), ("world", 1700, 2000))
    )
    assert spans(split_at_pauses(s, max_pause_ms=PAUSE)) == [(0, 300, "Hello,"), (1500, 2000, "big world.")]


def test_opening_marks_go_with_the_words_after_them() -> None:
    s = Sentence(
        0, 9, "他说：“你好”", 0, toks(("他", 0, 100), ("说", 100, 200), ("你", 3000, 3100), ("好", 3100, 3200))
    )
    assert [p.text for p in split_at_pauses(s, max_pause_ms=PAUSE)] == ["他说：", "“你好”"]
    s = Sentence(
        0, 9, 'he said "go now"', 0, toks(("he", 0, 100), ("said", 100, 200), ("go", 3000, 3100), ("now", 3100, 3200))
    )
    assert [p.text for p in split_at_pauses(s, max_pause_ms=PAUSE)] == ["he said", '"go now"']


def test_a_pause_exactly_at_the_threshold_does_not_split() -> None:
    at = Sentence(0, 0, "ab", None, toks(("a", 0, 100), ("b", 100 + PAUSE, 200 + PAUSE)))
    assert len(split_at_pauses(at, max_pause_ms=PAUSE)) == 1
    over = Sentence(0, 0, "ab", None, toks(("a", 0, 100), ("b", 101 + PAUSE, 200 + PAUSE)))
    assert [p.text for p in split_at_pauses(over, max_pause_ms=PAUSE)] == ["a", "b"]


def test_unsplit_sentence_is_respanned_to_its_tokens() -> None:
    # FunASR starts a sentence where the previous one ended: the silence before its first word is not speech
    s = Sentence(10_330, 19_780, "就就。", 0, toks(("就", 17_700, 17_800), ("就", 17_800, 19_700)))
    assert spans(split_at_pauses(s, max_pause_ms=PAUSE)) == [(17_700, 19_700, "就就。")]


def test_sentence_without_tokens_is_unchanged() -> None:
    s = Sentence(0, 20_000, "no timestamps here", 0)
    assert split_at_pauses(s, max_pause_ms=PAUSE) == [s]


def test_tokens_out_of_order_are_sorted_and_text_rebuilt() -> None:
    s = Sentence(0, 0, "a b c.", None, toks(("a", 0, 100), ("c", 3000, 3100), ("b", 100, 200)))
    pieces = split_at_pauses(s, max_pause_ms=PAUSE)
    assert spans(pieces) == [(0, 200, "a b"), (3000, 3100, "c.")]
    assert [t.text for t in pieces[0].tokens] == ["a", "b"]


def test_tokens_not_in_the_text_fall_back_to_token_text() -> None:
    # FunASR's per-sentence text can be off by one unit against the timestamps
    s = Sentence(0, 0, "就就分的。", 0, toks(("就", 0, 100), ("就", 100, 200), ("就", 2000, 2100), ("分", 2100, 2200)))
    assert [p.text for p in split_at_pauses(s, max_pause_ms=PAUSE)] == ["就就", "就分。"]


def test_punctuation_only_piece_is_glued_not_timed() -> None:
    s = Sentence(0, 5100, "好。", 0, toks(("好", 0, 100), ("。", 5000, 5100)))
    assert spans(split_at_pauses(s, max_pause_ms=PAUSE)) == [(0, 100, "好。")]
    lead = Sentence(0, 5100, "“好", 0, toks(("“", 0, 10), ("好", 5000, 5100)))
    assert spans(split_at_pauses(lead, max_pause_ms=PAUSE)) == [(5000, 5100, "“好")]


def test_overlapping_tokens_are_not_a_pause() -> None:
    s = Sentence(0, 0, "abc", None, toks(("a", 0, 3000), ("b", 100, 200), ("c", 3500, 3600)))
    assert len(split_at_pauses(s, max_pause_ms=PAUSE)) == 1  # c starts 500 ms after a's end


def test_vad_gaps_split_and_contiguous_segments_do_not() -> None:
    s = Sentence(0, 0, "abcd", None, toks(("a", 0, 100), ("b", 500, 600), ("c", 1000, 1100), ("d", 1500, 1600)))
    assert len(split_at_pauses(s, max_pause_ms=PAUSE)) == 1
    vad = [(0, 700), (900, 1300), (1300, 1700)]  # speech, a gap, then a forced cut without silence
    assert [p.text for p in split_at_pauses(s, max_pause_ms=PAUSE, vad_segments=vad)] == ["ab", "cd"]


def test_split_sentences_orders_pieces() -> None:
    a = Sentence(0, 0, "ab", 0, toks(("a", 0, 100), ("b", 5000, 5100)))
    b = Sentence(
        0,
        0,
        "c",
        1,
        toks(
            ("c", 2000, 2100),
        ),
    )
    assert [(p.text, p.speaker) for p in split_sentences([a, b], max_pause_ms=PAUSE)] == [("a", 0), ("c", 1), ("b", 0)]


@pytest.mark.parametrize("seed", range(20))
def test_no_piece_holds_a_long_pause(seed: int) -> None:
    rng = random.Random(seed)
    t, spec = 0, []
    for i in range(rng.randint(1, 40)):
        t += rng.choice([0, 50, 300, PAUSE, PAUSE + 1, 2000, 6000])
        length = rng.randint(20, 400)
        spec.append((f"w{i}", t, t + length))
        t += length
    s = Sentence(0, t, " ".join(w for w, _, _ in spec) + ".", 0, toks(*spec))
    pieces = split_at_pauses(s, max_pause_ms=PAUSE)
    assert [tok for p in pieces for tok in p.tokens] == list(s.tokens)
    assert " ".join(p.text for p in pieces) == s.text
    for p in pieces:
        assert (p.start_ms, p.end_ms) == (p.tokens[0].start_ms, max(x.end_ms for x in p.tokens))
        assert all(b.start_ms - a.end_ms <= PAUSE for a, b in itertools.pairwise(p.tokens))
    for a, b in itertools.pairwise(pieces):
        assert b.start_ms - a.end_ms > PAUSE


# --- FunASR result shapes --------------------------------------------------------------------------
def test_result_sentence_spanning_a_silence_is_split() -> None:
    """The long-pause case's shape: punctuation made one sentence 10.3-19.8 s across a 6 s silence."""
    stamps = [[10_400 + 200 * i, 10_600 + 200 * i] for i in range(7)] + [
        [17_700 + 250 * i, 17_950 + 250 * i] for i in range(8)
    ]
    text = "就" * 7 + "分的就就大大就对。"
    raw = {"text": text, "timestamp": stamps,
           "sentence_info": [{"start": 10_330, "end": 19_780, "text": text, "spk": 3, "timestamp": stamps},
                             {"start": 19_780, "end": 19_790, "text": "。", "spk": 3, "timestamp": [[19_780, 19_790]]}]}  # fmt: skip
    got = sentences_from_result(raw, 27_300, diarized=True, max_pause_ms=PAUSE)
    assert spans(got) == [(10_400, 11_800, "就" * 7), (17_700, 19_700, "分的就就大大就对。")]
    assert {s.speaker for s in got} == {3}
    off = sentences_from_result(raw, 27_300, diarized=False, max_pause_ms=PAUSE)
    assert spans(off) == spans(got) and {s.speaker for s in off} == {None}


def test_result_without_sentence_info_splits_the_whole_text() -> None:
    raw = {"text": "你好世界", "timestamp": [[0, 100], [100, 200], [3000, 3100], [3100, 3200]]}
    assert spans(sentences_from_result(raw, 4000, diarized=False, max_pause_ms=PAUSE)) == [
        (0, 200, "你好"),
        (3000, 3200, "世界"),
    ]
    assert sentences_from_result({"text": ""}, 4000, diarized=False, max_pause_ms=PAUSE) == []
    assert sentences_from_result({}, 4000, diarized=True, max_pause_ms=PAUSE) == []


# --- speakers and turns -------------------------------------------------------------------------------
def test_assign_speakers_by_overlap() -> None:
    pieces = [
        Sentence(0, 1000, "a", 0),
        Sentence(3000, 4000, "b", 0),
        Sentence(9000, 9500, "c", 7),
        Sentence(9600, 9700, "d"),
    ]
    segs = [(0, 1200, 0), (2900, 3300, 1), (3300, 4100, 1), (3000, 3500, 0), (5000, 6000, 2)]
    got = assign_speakers(pieces, segs)
    assert [s.speaker for s in got] == [0, 1, 7, 2]  # b: 1000 ms of 1 vs 500 of 0; c keeps; d: nearest
    assert [s.speaker for s in assign_speakers([Sentence(0, 100, "t")], [(0, 100, 3), (0, 100, 2)])] == [2]
    assert assign_speakers(pieces, []) == pieces


def test_merge_turns_never_joins_across_a_long_pause() -> None:
    s = (
        Sentence(0, 1000, "a", 0),
        Sentence(1500, 2000, "b", 0),  # 500 ms: same turn
        Sentence(3000, 4000, "c", 0),  # 1000 ms > 800: new turn although under turn_gap 3 s
        Sentence(4100, 5000, "d", 1),
        Sentence(5100, 6000, "e", 0),
    )
    turns = merge_turns(s, gap_ms=3000, max_pause_ms=PAUSE)
    assert [(t.speaker, t.start_ms, t.end_ms, t.text, t.first_sentence, t.last_sentence) for t in turns] == [
        (0, 0, 2000, "a b", 0, 1),
        (0, 3000, 4000, "c", 2, 2),
        (1, 4100, 5000, "d", 3, 3),
        (0, 5100, 6000, "e", 4, 4),
    ]
    assert len(merge_turns(s[:2], gap_ms=400, max_pause_ms=PAUSE)) == 2  # a smaller turn gap still splits
    at = (Sentence(0, 100, "x", None), Sentence(100 + PAUSE, 1000, "y", None))
    assert len(merge_turns(at, gap_ms=3000, max_pause_ms=PAUSE)) == 1
    cjk = merge_turns((Sentence(0, 10, "你好。", 0), Sentence(20, 30, "再见。", 0)), gap_ms=3000, max_pause_ms=PAUSE)
    assert cjk[0].text == "你好。再见。"


def test_noise_label_is_not_a_speaker() -> None:
    s = [Sentence(0, 1, "a", -1), Sentence(2, 3, "b", 4), Sentence(4, 5, "c", -1), Sentence(6, 7, "d", 2)]
    assert [x.speaker for x in relabel_speakers(absorb_noise_label(s))] == [0, 0, 0, 1]
