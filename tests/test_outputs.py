"""Golden-file tests of the transcript writers (funasr_fleet.outputs).

Small hand-built transcripts are compared byte for byte with files in tests/golden/; the
45-minute transcript (synthesised here, ~7,400 sentences) is checked structurally and by the
sha256 digests in tests/golden/long_45min.sha256.json. Regenerate after an intended change:

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_outputs.py
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from funasr_fleet import outputs
from funasr_fleet.engine.transcript import (
    ChannelUse,
    ModelIdentity,
    Sentence,
    Token,
    TranscribeOptions,
    Transcript,
    TranscriptWarning,
    Turn,
    WarningCode,
)
from funasr_fleet.errors import UnsupportedFormat
from funasr_fleet.outputs import FORMATS, OutputMeta, parse_json, render, render_bytes, write_file
from funasr_fleet.settings import ALL_FORMATS

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
H = 3_600_000  # one hour in ms

MODEL = ModelIdentity(
    asr="iic/speech_seaco_paraformer_large_asr_nat-zh-cn-16k-common-vocab8404-pytorch",
    vad="fsmn-vad",
    punc="ct-punc",
    spk="cam++",
    funasr_version="1.4.16",
    device="cpu",
    fingerprint="sha256:0f3c9a6b2d1e",
)


# --- hand-built cases ----------------------------------------------------------------------------
def _chars(text: str, start: int, end: int) -> tuple[Token, ...]:
    """One token per non-space character, spread evenly: FunASR's char-level timestamps for zh."""
    chars = [c for c in text if not c.isspace()]
    step = (end - start) // max(1, len(chars))
    return tuple(Token(c, start + i * step, start + (i + 1) * step) for i, c in enumerate(chars))


def case_cjk_diarized() -> tuple[Transcript, OutputMeta]:
    texts = [
        (0, 1_200, 3_400, "大家好，欢迎收听本期节目。"),
        (0, 3_600, 5_100, "今天我们聊聊语音识别。"),
        (1, 5_600, 8_050, "谢谢邀请！Hello everyone."),
        (2, 8_300, 9_000, "嗯。"),
        (1, 9_100, 12_345, "FunASR 的 Paraformer 模型很快。"),
    ]
    sentences = tuple(Sentence(s, e, t, spk, _chars(t, s, e)) for spk, s, e, t in texts)
    turns = (
        Turn(0, 1_200, 5_100, "大家好，欢迎收听本期节目。 今天我们聊聊语音识别。", 0, 1),
        Turn(1, 5_600, 8_050, "谢谢邀请！Hello everyone.", 2, 2),
        Turn(2, 8_300, 9_000, "嗯。", 3, 3),
        Turn(1, 9_100, 12_345, "FunASR 的 Paraformer 模型很快。", 4, 4),
    )
    t = Transcript(
        sentences=sentences,
        turns=turns,
        speakers=(0, 1, 2),
        duration_ms=13_000,
        model=MODEL,
        options=TranscribeOptions(hotwords=("FunASR", "Paraformer"), diarize=True, num_speakers=3, language="zh"),
        language="zh",
        wall_s=1.8125,
        decode_s=0.0625,
    )
    meta = OutputMeta(
        source="s3://fleet-audio/podcasts/第1期 intro.m4a",
        job_id="j-cjk-0001",
        audio={"sample_rate": 44100, "codec": "aac", "channels": 2, "container": "mov,mp4,m4a,3gp,3g2,mj2"},
    )
    return t, meta


def case_empty() -> tuple[Transcript, OutputMeta]:
    t = Transcript(sentences=(), turns=(), speakers=(), duration_ms=0, model=MODEL)
    return t, OutputMeta(source="/data/silence.wav")


def case_hour_boundaries() -> tuple[Transcript, OutputMeta]:
    """Cues at 59:59.999 -> 1 h, across 24 h, at 25 h and at 100 h: hours keep counting."""
    rows = [
        (0, H - 1_500, H - 1, "Just before the hour."),
        (1, H - 1, H + 1, "Across the hour."),
        (0, 24 * H - 500, 24 * H + 500, "Across a day."),
        (1, 25 * H, 25 * H + 1_000, "Twenty-five hours in."),
        (0, 100 * H + 59 * 60_000 + 59_999, 101 * H, "A hundred hours in."),
    ]
    sentences = tuple(Sentence(s, e, text, spk) for spk, s, e, text in rows)
    turns = tuple(Turn(spk, s, e, text, i, i) for i, (spk, s, e, text) in enumerate(rows))
    t = Transcript(sentences, turns, (0, 1), 101 * H, MODEL, language="en", wall_s=36_360.0, decode_s=400.0)
    return t, OutputMeta(source="s3://fleet-audio/archive/marathon.flac", job_id="j-marathon")


def case_no_diarization() -> tuple[Transcript, OutputMeta]:
    """diarize=False: no speakers anywhere; prefixes vanish, RTTM falls back to SPEECH."""
    rows = [(500, 2_000, "第一句话。"), (2_400, 4_000, "第二句话。"), (6_000, 7_500, "Third sentence.")]
    sentences = tuple(Sentence(s, e, text, None, _chars(text, s, e)) for s, e, text in rows)
    turns = (Turn(None, 500, 4_000, "第一句话。 第二句话。", 0, 1), Turn(None, 6_000, 7_500, "Third sentence.", 2, 2))
    t = Transcript(
        sentences,
        turns,
        (),
        8_000,
        replace(MODEL, spk=""),
        options=TranscribeOptions(diarize=False),
        wall_s=0.5,
        decode_s=0.01,
    )
    return t, OutputMeta(source="recordings/meeting notes.wav", job_id=None, audio={"sample_rate": 16000})


def case_escaping() -> tuple[Transcript, OutputMeta]:
    """Markup, the cue separator, line breaks and empty/blank sentences."""
    rows = [
        (0, 0, 1_000, "if a < b && c > d --> done"),
        (1, 1_000, 2_000, "line one\nline two\r\n\nline three"),
        (0, 2_000, 2_500, ""),
        (1, 2_500, 3_000, "  \n "),
        (0, 3_000, 4_000, "<v SPEAKER_99>not a voice tag</v>"),
        (1, 5_000, 4_000, "end before start"),
        (0, 6_000, 6_000, "zero length"),
    ]
    sentences = tuple(Sentence(s, e, text, spk) for spk, s, e, text in rows)
    turns = tuple(Turn(spk, s, e, text, i, i) for i, (spk, s, e, text) in enumerate(rows))
    t = Transcript(sentences, turns, (0, 1), 7_000, MODEL, wall_s=0.1, decode_s=0.0)
    return t, OutputMeta(source="s3://b/k/odd name\twith tab.mp3?versionId=3", job_id="j-esc")


def case_split_channels() -> tuple[Transcript, OutputMeta]:
    """A stereo call split by channel (agent left, caller right), a speaker range, one warning."""
    rows = [(0, 0, 500, 2_100, "Thank you for calling."), (1, 1, 2_300, 3_900, "Hi, my card is blocked."),
            (0, 0, 3_800, 5_000, "Let me check that."), (2, 1, 6_200, 7_000, "Okay.")]  # fmt: skip
    sentences = tuple(Sentence(s, e, text, spk) for spk, _, s, e, text in rows)
    turns = tuple(Turn(spk, s, e, text, i, i) for i, (spk, _, s, e, text) in enumerate(rows))
    warning = TranscriptWarning(WarningCode.SPEAKER_COUNT_NOT_MET.value, "asked for 4-6 speakers; found 3")
    t = Transcript(
        sentences,
        turns,
        (0, 1, 2),
        7_500,
        MODEL,
        options=TranscribeOptions(min_speakers=4, max_speakers=6, channels="split"),
        language="en",
        wall_s=0.25,
        decode_s=0.01,
        warnings=(warning,),
        channel_use=ChannelUse("split", (0, 1)),
        speaker_channels=(0, 1, 1),
    )
    return t, OutputMeta(source="s3://calls/2026/ticket-77.wav", job_id="j-call-77", audio={"channels": 2})


def case_cancelled_mix() -> tuple[Transcript, OutputMeta]:
    """Stereo whose channels cancel when averaged: one channel used instead, and the warning says so."""
    sentences = (Sentence(300, 1_800, "Is this thing on?", 0), Sentence(2_000, 2_900, "Yes.", 1))
    turns = (Turn(0, 300, 1_800, "Is this thing on?", 0, 0), Turn(1, 2_000, 2_900, "Yes.", 1, 1))
    warnings = (
        TranscriptWarning(WarningCode.CHANNELS_CANCELLED.value, "the channels cancel when mixed; channel 0 used alone"),
        TranscriptWarning(WarningCode.CHANNEL_SILENT.value, "channel 2 holds no signal"),
    )
    t = Transcript(sentences, turns, (0, 1), 3_000, MODEL, options=TranscribeOptions(channels="mix"),
                   warnings=warnings, channel_use=ChannelUse("single", (0,)))  # fmt: skip
    return t, OutputMeta(source="/data/phase.wav", job_id="j-phase", audio={"channels": 3})


CASES: dict[str, Callable[[], tuple[Transcript, OutputMeta]]] = {
    "cjk_diarized": case_cjk_diarized,
    "empty": case_empty,
    "hour_boundaries": case_hour_boundaries,
    "no_diarization": case_no_diarization,
    "escaping": case_escaping,
    "split_channels": case_split_channels,
    "cancelled_mix": case_cancelled_mix,
}
LEGACY = GOLDEN / "before-channels"
"""JSON golden files as written before warnings, channels and speaker ranges: still read."""


# --- the 45-minute transcript ------------------------------------------------------------------
_WORDS = [
    "我们",
    "今天",
    "讨论",
    "语音",
    "识别",
    "模型",
    "the",
    "fleet",
    "queue",
    "consumer",
    "会议",
    "结果",
    "好的",
    "对",
]


def synth_45min() -> Transcript:
    """~7,400 sentences over 45 minutes, three speakers, char tokens. Pure arithmetic (no RNG)."""
    duration = 45 * 60_000
    n = 7_400
    slot = duration // n  # 364 ms per sentence slot
    sentences: list[Sentence] = []
    for i in range(n):
        start = i * slot + (i * 37) % 40
        end = start + slot - 40 - (i * 13) % 60
        words = [_WORDS[(i * 7 + k * 3) % len(_WORDS)] for k in range(1 + i % 4)]
        text = "".join(words) + ("。" if i % 3 else "？")
        speaker = (i // 9) % 3 if i % 11 else (i // 5) % 3
        step = (end - start) // len(text)
        tokens = tuple(Token(c, start + k * step, start + (k + 1) * step) for k, c in enumerate(text))
        sentences.append(Sentence(start, end, text, speaker, tokens))
    turns: list[Turn] = []
    first = 0
    for i in range(1, n + 1):
        if i == n or sentences[i].speaker != sentences[first].speaker:
            group = sentences[first:i]
            turns.append(
                Turn(
                    group[0].speaker, group[0].start_ms, group[-1].end_ms, " ".join(s.text for s in group), first, i - 1
                )
            )
            first = i
    return Transcript(
        tuple(sentences),
        tuple(turns),
        (0, 1, 2),
        duration,
        MODEL,
        options=TranscribeOptions(diarize=True),
        language="zh",
        wall_s=54.321,
        decode_s=1.234,
    )


LONG_META = OutputMeta(
    source="s3://fleet-audio/meetings/2026-11-28 all-hands.wav",
    job_id="j-45min",
    audio={"container": "wav", "codec": "pcm_s16le", "sample_rate": 16000, "channels": 1},
)


@pytest.fixture(scope="module")
def long_transcript() -> Transcript:
    return synth_45min()


@pytest.fixture(scope="module")
def schema_validator() -> jsonschema.Draft202012Validator:
    schema = outputs.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# --- golden comparisons --------------------------------------------------------------------------
def _golden(path: Path, data: bytes) -> None:
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    if not path.exists():
        pytest.fail(f"missing golden file {path}; run UPDATE_GOLDEN=1 pytest tests/test_outputs.py")
    expected = path.read_bytes()
    if data != expected:
        got, want = data.decode("utf-8", "replace"), expected.decode("utf-8", "replace")
        assert got == want, f"{path.name} differs from golden (UPDATE_GOLDEN=1 to accept an intended change)"
        assert data == expected


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str, fmt: str) -> None:
    transcript, meta = CASES[case]()
    data = render_bytes(fmt, transcript, meta)
    _golden(GOLDEN / f"{case}.{FORMATS[fmt].extension}", data)
    # streaming chunks concatenate to exactly render_bytes, and are each valid UTF-8 text
    assert "".join(render(fmt, transcript, meta)).encode("utf-8") == data
    data.decode("utf-8")


def test_long_45min_digests(long_transcript: Transcript) -> None:
    digests = {
        fmt: hashlib.sha256(render_bytes(fmt, long_transcript, LONG_META)).hexdigest() for fmt in sorted(FORMATS)
    }
    path = GOLDEN / "long_45min.sha256.json"
    _golden(path, (json.dumps(digests, indent=2, sort_keys=True) + "\n").encode())


# --- structure of every format ----------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_json_matches_schema_and_round_trips(case: str, schema_validator: jsonschema.Draft202012Validator) -> None:
    transcript, meta = CASES[case]()
    data = render_bytes("json", transcript, meta)
    schema_validator.validate(json.loads(data))
    parsed, parsed_meta = parse_json(data)
    assert parsed == transcript
    assert parsed_meta == meta
    assert render_bytes("json", parsed, parsed_meta) == data
    for fmt in FORMATS:  # a reused (cached) transcript renders every format identically
        assert render_bytes(fmt, parsed, parsed_meta) == render_bytes(fmt, transcript, meta)


def test_reuse_for_another_job() -> None:
    """The result-reuse cache: parse a cached JSON, re-render it for another job and source."""
    transcript, meta = case_cjk_diarized()
    cached, _ = parse_json(render_bytes("json", transcript, meta))
    other = OutputMeta(source="s3://other/copy.m4a", job_id="j-other", audio=meta.audio)
    doc = json.loads(render_bytes("json", cached, other))
    assert doc["job_id"] == "j-other" and doc["audio"]["source"] == "s3://other/copy.m4a"
    assert render_bytes("srt", cached, other) == render_bytes("srt", transcript, meta)
    assert b"SPEAKER copy 1 " in render_bytes("rttm", cached, other)


def test_json_is_deterministic_and_readable() -> None:
    transcript, meta = case_cjk_diarized()
    shuffled = replace(meta, audio=dict(reversed(list((meta.audio or {}).items()))))
    data = render_bytes("json", transcript, meta)
    assert render_bytes("json", transcript, shuffled) == data
    text = data.decode("utf-8")
    assert "大家好" in text and "\\u" not in text  # ensure_ascii=False
    doc = json.loads(data)
    assert list(doc) == ["schema", "job_id", "audio", "language", "model", "options", "processing", "warnings",
                         "speakers", "turns", "sentences"]  # fmt: skip
    assert doc["schema"] == "funasr-fleet.transcript/1"
    assert list(doc["audio"]["media"]) == sorted(doc["audio"]["media"])
    assert doc["speakers"][1] == {"id": 1, "label": "SPEAKER_01", "talk_ms": 2_450 + 3_245, "turn_count": 2,
                                  "sentence_count": 2, "channel": None}  # fmt: skip
    assert doc["warnings"] == [] and doc["audio"]["channel_use"] is None
    assert doc["processing"] == {"wall_s": 1.8125, "decode_s": 0.0625, "real_time_factor": round(1.8125 / 13, 6)}
    assert doc["sentences"][0]["tokens"][0] == ["大", 1_200, 1_369]


def test_json_non_finite_processing_figures_round_trip() -> None:
    transcript, meta = case_empty()
    weird = replace(transcript, wall_s=float("nan"), decode_s=float("inf"))
    data = render_bytes("json", weird, meta)
    doc = json.loads(data)
    assert doc["processing"] == {"wall_s": None, "decode_s": None, "real_time_factor": 0.0}
    parsed, parsed_meta = parse_json(data)
    assert math.isnan(parsed.wall_s) and render_bytes("json", parsed, parsed_meta) == data


def test_json_media_non_finite_becomes_null() -> None:
    transcript, meta = case_empty()
    doc = json.loads(
        render_bytes("json", transcript, replace(meta, audio={"duration_s": float("nan"), "size_bytes": 3}))
    )
    assert doc["audio"]["media"] == {"duration_s": None, "size_bytes": 3}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"schema": "funasr-fleet.transcript/2"}',
        b'{"schema": "funasr-fleet.transcript/1"}',
    ],
)
def test_parse_json_rejects_foreign_documents(data: bytes) -> None:
    with pytest.raises(outputs.TranscriptParseError):
        parse_json(data)


def test_parse_json_rejects_wrong_types() -> None:
    transcript, meta = case_cjk_diarized()
    doc = json.loads(render_bytes("json", transcript, meta))
    doc["sentences"][0]["start_ms"] = "1200"
    with pytest.raises(outputs.TranscriptParseError):
        parse_json(json.dumps(doc).encode())
    doc = json.loads(render_bytes("json", transcript, meta))
    doc["sentences"][0]["tokens"][0] = ["大", 1]
    with pytest.raises(outputs.TranscriptParseError):
        parse_json(json.dumps(doc).encode())


_SRT_TIME = r"\d{2,}:\d{2}:\d{2},\d{3}"
_VTT_TIME = r"\d{2,}:\d{2}:\d{2}\.\d{3}"


def _blocks(text: str) -> list[list[str]]:
    return [b.split("\n") for b in text.split("\n\n") if b.strip()]


@pytest.mark.parametrize("case", sorted(CASES))
def test_srt_structure(case: str) -> None:
    transcript, meta = CASES[case]()
    text = render_bytes("srt", transcript, meta).decode()
    blocks = _blocks(text)
    spoken = [s for s in transcript.sentences if s.text.strip()]
    assert len(blocks) == len(spoken)
    for n, (block, sentence) in enumerate(zip(blocks, spoken, strict=True), start=1):
        assert len(block) == 3, block  # number, timing, one line of text
        assert block[0] == str(n)
        assert re.fullmatch(f"{_SRT_TIME} --> {_SRT_TIME}", block[1])
        assert block[2].startswith("SPEAKER_") == (sentence.speaker is not None)
    assert text == "" or text.endswith("\n\n")


@pytest.mark.parametrize("case", sorted(CASES))
def test_vtt_structure(case: str) -> None:
    transcript, meta = CASES[case]()
    text = render_bytes("vtt", transcript, meta).decode()
    assert text.startswith("WEBVTT\n\n")
    blocks = _blocks(text[len("WEBVTT\n\n") :])
    assert len(blocks) == len([s for s in transcript.sentences if s.text.strip()])
    for block in blocks:
        assert len(block) == 3 and re.fullmatch(f"{_VTT_TIME} --> {_VTT_TIME}", block[1])
        body = block[2]
        assert "-->" not in body
        assert re.sub(r"^<v SPEAKER_\d{2,}>", "", body).count("<") == 0  # only the voice tag is markup
        assert re.search(r"&(?!amp;|lt;|gt;)", body) is None


def test_escaping_specifics() -> None:
    transcript, meta = case_escaping()
    vtt = render_bytes("vtt", transcript, meta).decode()
    assert "<v SPEAKER_00>if a &lt; b &amp;&amp; c &gt; d --&gt; done" in vtt
    assert "<v SPEAKER_00>&lt;v SPEAKER_99&gt;not a voice tag&lt;/v&gt;" in vtt
    srt = render_bytes("srt", transcript, meta).decode()
    assert "SPEAKER_01: line one line two line three\n" in srt
    assert "00:00:05,000 --> 00:00:05,000" in srt  # end before start is clamped to the start
    rttm = render_bytes("rttm", transcript, meta).decode().splitlines()
    assert all(line.split()[1] == "odd_name_with_tab" for line in rttm)
    assert not any(" 0.000 <NA>" in line for line in rttm)  # zero-length segments are dropped


def test_hour_boundaries_specifics() -> None:
    transcript, meta = case_hour_boundaries()
    srt = render_bytes("srt", transcript, meta).decode()
    assert "00:59:58,500 --> 00:59:59,999" in srt
    assert "00:59:59,999 --> 01:00:00,001" in srt
    assert "23:59:59,500 --> 24:00:00,500" in srt
    assert "25:00:00,000 --> 25:00:01,000" in srt
    assert "100:59:59,999 --> 101:00:00,000" in srt
    vtt = render_bytes("vtt", transcript, meta).decode()
    assert "25:00:00.000 --> 25:00:01.000" in vtt
    txt = render_bytes("txt", transcript, meta).decode()
    assert "[25:00:00] SPEAKER_01: Twenty-five hours in.\n" in txt
    rttm = render_bytes("rttm", transcript, meta).decode()
    assert "SPEAKER marathon 1 90000.000 1.000 <NA> <NA> SPEAKER_01 <NA> <NA>\n" in rttm


def test_no_diarization_specifics() -> None:
    transcript, meta = case_no_diarization()
    assert "SPEAKER_" not in render_bytes("srt", transcript, meta).decode()
    vtt = render_bytes("vtt", transcript, meta).decode()
    assert "<v " not in vtt and "00:00:00.500 --> 00:00:02.000\n第一句话。\n" in vtt
    assert render_bytes("txt", transcript, meta).decode().splitlines()[0] == "[00:00:00] 第一句话。 第二句话。"
    rttm = render_bytes("rttm", transcript, meta).decode().splitlines()
    assert rttm[0] == "SPEAKER meeting_notes 1 0.500 1.500 <NA> <NA> SPEECH <NA> <NA>"
    assert json.loads(render_bytes("json", transcript, meta))["speakers"] == []


def test_split_channels_specifics(schema_validator: jsonschema.Draft202012Validator) -> None:
    transcript, meta = case_split_channels()
    doc = json.loads(render_bytes("json", transcript, meta))
    schema_validator.validate(doc)
    assert doc["audio"]["channel_use"] == {"mode": "split", "channels": [0, 1]}
    assert [(s["id"], s["channel"]) for s in doc["speakers"]] == [(0, 0), (1, 1), (2, 1)]
    assert doc["warnings"] == [{"code": "speaker_count_not_met", "message": "asked for 4-6 speakers; found 3"}]
    assert doc["options"] == {"hotwords": [], "diarize": True, "num_speakers": None, "language": None,
                              "min_speakers": 4, "max_speakers": 6, "channels": "split"}  # fmt: skip
    rttm = render_bytes("rttm", transcript, meta).decode().splitlines()
    assert [line.split()[2] for line in rttm] == ["1", "2", "1", "2"]  # 1-based: speaker 2 spoke on channel 1
    # subtitles and text know nothing of channels or warnings
    assert render_bytes("srt", transcript, meta).decode().startswith("1\n00:00:00,500 --> 00:00:02,100\nSPEAKER_00: ")
    assert "warning" not in render_bytes("txt", transcript, meta).decode().lower()


def test_mixed_or_unrecorded_channels_are_rttm_channel_1() -> None:
    for case in (case_cancelled_mix, case_cjk_diarized, case_no_diarization):
        transcript, meta = case()
        assert {line.split()[2] for line in render_bytes("rttm", transcript, meta).decode().splitlines()} == {"1"}
        assert all(row["channel"] is None for row in json.loads(render_bytes("json", transcript, meta))["speakers"])


@pytest.mark.parametrize("case", sorted(p.stem for p in LEGACY.glob("*.json")))
def test_documents_from_before_channels_still_read(
    case: str, schema_validator: jsonschema.Draft202012Validator
) -> None:
    """Old documents validate, parse to the same transcript (new fields at their defaults), and
    re-render as today's document: only the new fields are added."""
    old = (LEGACY / f"{case}.json").read_bytes()
    schema_validator.validate(json.loads(old))
    parsed, parsed_meta = parse_json(old)
    transcript, meta = CASES[case]()
    assert (parsed, parsed_meta) == (transcript, meta)
    assert parsed.warnings == () and parsed.channel_use is None and parsed.speaker_channels == ()
    assert parsed.options.channels == "auto" and parsed.options.min_speakers is parsed.options.max_speakers is None
    new = json.loads(render_bytes("json", parsed, parsed_meta))
    assert new["warnings"] == [] and new["audio"].pop("channel_use") is None
    for row in new["speakers"]:
        assert row.pop("channel") is None
    assert {k: new["options"].pop(k) for k in ("min_speakers", "max_speakers", "channels")} == {
        "min_speakers": None, "max_speakers": None, "channels": "auto"}  # fmt: skip
    del new["warnings"]
    assert new == json.loads(old)
    for fmt in ("srt", "vtt", "txt", "rttm"):  # the other formats of an old document are unchanged
        assert render_bytes(fmt, parsed, parsed_meta) == (GOLDEN / f"{case}.{fmt}").read_bytes()


def test_parse_json_rejects_bad_new_fields() -> None:
    transcript, meta = case_split_channels()
    for path, value in ((("options", "channels"), "stereo"), (("audio", "channel_use"), {"mode": "x", "channels": []}),
                        (("warnings",), [{"code": 1, "message": "m"}])):  # fmt: skip
        doc = json.loads(render_bytes("json", transcript, meta))
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(outputs.TranscriptParseError):
            parse_json(json.dumps(doc).encode())


def test_txt_falls_back_to_sentences_without_turns() -> None:
    transcript, meta = case_no_diarization()
    txt = render_bytes("txt", replace(transcript, turns=()), meta).decode()
    assert txt.splitlines() == ["[00:00:00] 第一句话。", "[00:00:02] 第二句话。", "[00:00:06] Third sentence."]


@pytest.mark.parametrize("case", sorted(CASES))
def test_rttm_structure(case: str) -> None:
    transcript, meta = CASES[case]()
    for line in render_bytes("rttm", transcript, meta).decode().splitlines():
        fields = line.split(" ")
        assert len(fields) == 10
        assert fields[0] == "SPEAKER" and re.fullmatch(r"[1-9][0-9]*", fields[2])  # 1-based channel
        assert fields[5:7] == ["<NA>", "<NA>"] and fields[8:] == ["<NA>", "<NA>"]
        assert re.fullmatch(r"\d+\.\d{3}", fields[3]) and re.fullmatch(r"\d+\.\d{3}", fields[4])
        assert float(fields[4]) > 0
        assert re.fullmatch(r"SPEAKER_\d{2,}|SPEECH", fields[7])


# --- the long transcript: structure, streaming ---------------------------------------------------
def test_long_45min_structure(long_transcript: Transcript, schema_validator: jsonschema.Draft202012Validator) -> None:
    n = len(long_transcript.sentences)
    assert 7_300 <= n <= 7_500
    data = render_bytes("json", long_transcript, LONG_META)
    doc = json.loads(data)
    schema_validator.validate(doc)
    assert len(doc["sentences"]) == n and len(doc["turns"]) == len(long_transcript.turns)
    assert sum(s["sentence_count"] for s in doc["speakers"]) == n
    parsed, parsed_meta = parse_json(data)
    assert parsed == long_transcript and render_bytes("json", parsed, parsed_meta) == data

    srt = render_bytes("srt", long_transcript, LONG_META).decode()
    assert srt.count(" --> ") == n and srt.startswith("1\n00:00:00,000 --> ")
    assert f"\n{n}\n00:44:5" in srt
    vtt = render_bytes("vtt", long_transcript, LONG_META).decode()
    assert vtt.count(" --> ") == n
    txt = render_bytes("txt", long_transcript, LONG_META).decode()
    assert txt.count("\n") == len(long_transcript.turns)
    rttm = render_bytes("rttm", long_transcript, LONG_META).decode()
    assert rttm.count("\n") == n and rttm.startswith("SPEAKER 2026-11-28_all-hands 1 0.000 ")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_long_45min_streams_in_chunks(fmt: str, long_transcript: Transcript) -> None:
    chunks = list(render(fmt, long_transcript, LONG_META))
    total = sum(len(c) for c in chunks)
    assert len(chunks) >= 5, "a 45-minute transcript must stream, not arrive as one string"
    assert max(len(c) for c in chunks) <= total // 4
    assert all(chunks), "no empty chunks"
    assert "".join(chunks).encode("utf-8") == render_bytes(fmt, long_transcript, LONG_META)


# --- API contract ------------------------------------------------------------------------------
def test_formats_registry() -> None:
    assert set(FORMATS) == set(ALL_FORMATS) == {"json", "srt", "vtt", "txt", "rttm"}
    for name, fmt in FORMATS.items():
        assert fmt.name == name and fmt.extension == name and not fmt.extension.startswith(".")
        assert fmt.filename() == f"transcript.{name}"
        assert "/" in fmt.content_type
    assert FORMATS["vtt"].content_type.startswith("text/vtt")
    assert FORMATS["json"].content_type == "application/json"


@pytest.mark.parametrize("bad", ["pdf", "JSON", "", ".srt"])
def test_unknown_format_raises_at_call(bad: str) -> None:
    transcript, meta = case_empty()
    with pytest.raises(UnsupportedFormat) as info:
        render(bad, transcript, meta)  # eager: not deferred to the first chunk
    assert info.value.code == "unsupported_format"
    with pytest.raises(UnsupportedFormat):
        render_bytes(bad, transcript, meta)


def test_write_file(tmp_path: Path) -> None:
    transcript, meta = case_cjk_diarized()
    target = tmp_path / "deep" / "dir" / "out.srt"
    assert write_file("srt", transcript, meta, target) == target
    assert target.read_bytes() == render_bytes("srt", transcript, meta)
    assert target.stat().st_mode & 0o644 == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["out.srt"]  # no temp file left behind
    with pytest.raises(UnsupportedFormat):
        write_file("doc", transcript, meta, tmp_path / "x.doc")
    assert not (tmp_path / "x.doc").exists()


def test_write_file_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    transcript, meta = case_cjk_diarized()

    def broken(t: Transcript, m: OutputMeta):  # type: ignore[no-untyped-def]
        yield "partial"
        raise RuntimeError("boom")

    monkeypatch.setitem(FORMATS, "txt", replace(FORMATS["txt"], writer=broken))
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        write_file("txt", transcript, meta, target)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("s3://bucket/a/b/talk.wav", "talk"),
        ("s3://bucket/a/b/my talk.final.mp3", "my_talk.final"),
        ("s3://bucket/key.m4a?versionId=7", "key"),
        ("s3://bucket/calls/take#2 (final)?.wav", "take#2_(final)?"),  # literal key: # and ? are key characters
        ("s3://bucket/q?x=1/a#b.wav", "a#b"),
        ("https://host/path/rec.wav?sig=abc#t=1", "rec"),
        ("/abs/path/rec.flac", "rec"),
        ("rec", "rec"),
        ("C:\\audio\\win file.wav", "win_file"),
        ("s3://bucket/dir/", "dir"),
        ("", "audio"),
        ("s3://bucket/.wav", ".wav"),
    ],
)
def test_rttm_file_id(source: str, expected: str) -> None:
    assert outputs.rttm_file_id(source) == expected


def test_writers_are_pure() -> None:
    """No broker, storage or engine imports in the writers' modules (the consumer uploads)."""
    text = "".join(p.read_text() for p in sorted(Path(outputs.__file__).parent.glob("*.py")))
    for forbidden in (
        "boto3",
        "pika",
        "torch",
        "funasr_fleet.storage",
        "funasr_fleet.consumer",
        "funasr_fleet.settings",
    ):
        assert f"import {forbidden}" not in text and f"from {forbidden}" not in text


def test_schema_ships_as_package_data() -> None:
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert '"schemas/*.json"' in pyproject
    schema = outputs.json_schema()
    assert schema["properties"]["schema"]["const"] == outputs.SCHEMA_ID
