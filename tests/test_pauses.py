"""The pause rule end to end: nothing (sentence, turn, SRT/VTT cue, RTTM segment) covers a silence
longer than the VAD's end-of-speech silence, and talk time counts speech only.

Through the real Engine (tiny models, FunASR's code path), through ``funasr-fleet transcribe`` and
through a job on the real broker and S3. Inputs: the handed case
(``$FLEET_CASES_DIR/long-pause/pause6s.wav``, default ``<repo>/../shared/cases``; used when present)
and unseen variants built here (espeak-ng + sox, digital silences of known
position): 1.5 s, 3 s, 6 s and 10 s pauses at other places, a pause inside one spoken sentence,
and Mandarin speech. Token times of the tiny model reach up to ~0.2 s into a silence, so a span
may touch a silence's edges by ``EDGE`` ms, never more.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from funasr_fleet.client import Client
from funasr_fleet.devaudio import VOICES, missing_tools
from funasr_fleet.engine.pipeline import Engine
from funasr_fleet.engine.transcript import TranscribeOptions, Transcript
from funasr_fleet.outputs import OutputMeta, render_bytes
from funasr_fleet.settings import Settings
from funasr_fleet.storage import Storage
from tests.fixtures.audio import speech_with_pauses

REPO = Path(__file__).resolve().parents[1]
CASES = Path(os.environ.get("FLEET_CASES_DIR", REPO.parent / "shared" / "cases"))
CASE = CASES / "long-pause" / "pause6s.wav"
CASE_SILENCES = [(11_790, 17_790)]  # case.md: 6 s of digital silence
EDGE = 250  # ms a span may reach into a silence (token timing of the tiny model)
PAUSE = 800  # engine.max_end_silence_ms (default)

A = "Good morning everyone, the quarterly numbers arrived last night and they look better than we expected."
B = "Revenue is up by twelve percent, and the costs stayed almost flat over the whole period."
C = "So the margins improved, which is good news for the whole team and for the next budget."
D = "Let us go through the details one region at a time, starting with the northern offices."
ONE_VOICE = (VOICES[0],)
VARIANTS: dict[str, tuple[list[str | float], tuple[tuple[str, str], ...]]] = {
    "six": ([A, 1.0, B, 6.0, C, 1.0, D], VOICES),  # the case's shape, other voices and lengths
    "early_1_5": ([A, 1.5, B, 0.4, C, 0.4, D], VOICES),
    # one spoken sentence with a 3 s pause in the middle, one voice
    "inside_3": (["Revenue grew strongly in the third quarter", 3.0, "because costs stayed flat", 0.5, B], ONE_VOICE),
    "late_10": ([A, 0.5, B, 0.5, C, 10.0, D], VOICES),
    "mandarin_3": (
        ["今天我们讨论语音识别模型的结果，大家都来了", 3.0, "会议结束以后我们一起去吃饭，然后回家休息"],
        (("cmn", "50"),),
    ),
}


@pytest.fixture(scope="module")
def pause_audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[tuple[int, int]]]]:
    """name → (wav, long silences as (start_ms, end_ms)); the handed case too when present."""
    missing = missing_tools()
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    root = tmp_path_factory.mktemp("pauses")
    out = {}
    for name, (parts, voices) in VARIANTS.items():
        silences = speech_with_pauses(root / f"{name}.wav", parts, voices)
        out[name] = (root / f"{name}.wav", [(a, b) for a, b in silences if b - a > PAUSE])
    if CASE.is_file():
        out["case_pause6s"] = (CASE, CASE_SILENCES)
    return out


def covering(spans: list[tuple[int, int]], silences: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """Every (span, silence) where the span reaches more than EDGE ms into the silence."""
    return [(s, e, a, b) for s, e in spans for a, b in silences if min(e, b) - max(s, a) > EDGE]


def spans_of_outputs(transcript: Transcript, source: str) -> dict[str, list[tuple[int, int]]]:
    """Sentence, turn, SRT/VTT cue and RTTM segment spans (ms) of one transcript as written."""
    meta = OutputMeta(source=source)
    return spans_of_documents(
        render_bytes("json", transcript, meta).decode(),
        render_bytes("srt", transcript, meta).decode(),
        render_bytes("vtt", transcript, meta).decode(),
        render_bytes("rttm", transcript, meta).decode(),
    )


def spans_of_documents(doc: str, srt: str, vtt: str, rttm: str) -> dict[str, list[tuple[int, int]]]:
    def clock(h: str, m: str, s: str, ms: str) -> int:
        return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(ms)

    cue = r"(\d+):(\d\d):(\d\d)[,.](\d{3}) --> (\d+):(\d\d):(\d\d)[,.](\d{3})"
    data = json.loads(doc)
    return {
        "sentences": [(s["start_ms"], s["end_ms"]) for s in data["sentences"]],
        "turns": [(t["start_ms"], t["end_ms"]) for t in data["turns"]],
        "srt": [(clock(*m[:4]), clock(*m[4:])) for m in re.findall(cue, srt)],
        "vtt": [(clock(*m[:4]), clock(*m[4:])) for m in re.findall(cue, vtt)],
        "rttm": [
            (round(float(f[3]) * 1000), round((float(f[3]) + float(f[4])) * 1000))
            for f in (line.split() for line in rttm.splitlines())
        ],
    }


def check_talk_time(transcript: Transcript, silences: list[tuple[int, int]]) -> None:
    """Talk time is speech: at most the audio minus its long silences, and most of the speech."""
    talk = sum(s.end_ms - s.start_ms for s in transcript.sentences)
    speech = transcript.duration_ms - sum(b - a for a, b in silences)
    assert talk <= speech + 2 * EDGE * len(silences), (talk, speech)
    assert talk >= 0.7 * speech, (talk, speech)


@pytest.mark.parametrize("diarize", [True, False], ids=["diarized", "no-diarization"])
def test_no_span_covers_a_long_silence(engine: Engine, pause_audio: dict, diarize: bool) -> None:
    for name, (path, silences) in pause_audio.items():
        t = engine.transcribe(path, TranscribeOptions(diarize=diarize))
        assert t.sentences, name
        for kind, spans in spans_of_outputs(t, str(path)).items():
            assert spans, (name, kind)
            assert covering(spans, silences) == [], (name, kind)
        check_talk_time(t, silences)
        assert all(s.tokens and s.start_ms == s.tokens[0].start_ms for s in t.sentences), name
        for s in t.sentences:  # no pause inside a sentence longer than the VAD's end-of-speech silence
            ends = [tok.end_ms for tok in s.tokens]
            assert all(b.start_ms - max(ends[: i + 1]) <= PAUSE for i, b in enumerate(s.tokens[1:])), (name, s)
        if diarize:
            talk = {spk: sum(s.end_ms - s.start_ms for s in t.sentences if s.speaker == spk) for spk in t.speakers}
            assert sum(talk.values()) == sum(s.end_ms - s.start_ms for s in t.sentences)
        else:
            assert t.speakers == () and all(s.speaker is None for s in t.sentences)


def test_funasr_alone_spans_the_silences(engine: Engine, pause_audio: dict) -> None:
    """The fix is exercised: FunASR's own sentences (before the pause rule) do cover silences."""
    spanning = []
    for name, (path, silences) in pause_audio.items():
        raw = engine._generate(engine.load_audio(path).samples, TranscribeOptions())
        spans = [(int(i["start"]), int(i["end"])) for i in raw.get("sentence_info", [])]
        spanning += [name] if covering(spans, silences) else []
    assert len(spanning) >= 3, spanning


def fleet(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "funasr_fleet", *args],
        env={**os.environ, "FLEET_LOG__FORMAT": "json", **env}, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.parametrize("diarize", [True, False], ids=["diarized", "no-diarization"])
def test_transcribe_command_follows_the_pauses(
    engine_env: dict[str, str], pause_audio: dict, tmp_path: Path, diarize: bool
) -> None:
    names = ["case_pause6s" if "case_pause6s" in pause_audio else "six", "inside_3"]
    files = [str(pause_audio[n][0]) for n in names]
    flags = [] if diarize else ["--no-diarize"]
    proc = fleet("transcribe", *files, "-f", "json,srt,vtt,rttm,txt", "-o", str(tmp_path), *flags, env=engine_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in names:
        path, silences = pause_audio[name]
        stem = tmp_path / path.stem
        docs = [(stem.with_suffix(f".{ext}")).read_text() for ext in ("json", "srt", "vtt", "rttm")]
        for kind, spans in spans_of_documents(*docs).items():
            assert spans and covering(spans, silences) == [], (name, kind)
        doc = json.loads(docs[0])
        speech = doc["audio"]["duration_ms"] - sum(b - a for a, b in silences)
        talk = sum(s["end_ms"] - s["start_ms"] for s in doc["sentences"])
        assert 0.7 * speech <= talk <= speech + 2 * EDGE * len(silences)
        if diarize:
            assert sum(row["talk_ms"] for row in doc["speakers"]) == talk
        else:
            assert doc["speakers"] == [] and all(line.split()[7] == "SPEECH" for line in docs[3].splitlines())


def test_a_job_on_the_real_broker_and_s3_follows_the_pauses(
    fleet_settings: Callable[..., Settings], storage: Storage, pause_audio: dict, tmp_path: Path
) -> None:
    """The same rule through a consumer: job in over RabbitMQ, audio from and outputs to S3."""
    from tests.test_consumer import consumer_thread

    name = "case_pause6s" if "case_pause6s" in pause_audio else "six"
    path, silences = pause_audio[name]
    s = fleet_settings(with_engine=True, consumer={"heartbeat_file": str(tmp_path / "hb.json")})
    storage.put_bytes(s.s3.inbox_bucket, f"pauses/{path.name}", path.read_bytes())
    with consumer_thread(s), Client(s) as client:
        job_id = client.submit(f"s3://{s.s3.inbox_bucket}/pauses/{path.name}", formats=["json", "srt", "vtt", "rttm"])
        result = client.wait(job_id, 300)
    assert result.ok, (result.error_code, result.error_message)
    texts = {}
    for uri in result.outputs[:-1]:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        texts[key.rsplit(".", 1)[1]] = storage.get_bytes(bucket, key).decode()
    for kind, spans in spans_of_documents(texts["json"], texts["srt"], texts["vtt"], texts["rttm"]).items():
        assert spans and covering(spans, silences) == [], (name, kind)
    doc = json.loads(texts["json"])
    speech = doc["audio"]["duration_ms"] - sum(b - a for a, b in silences)
    assert 0.7 * speech <= sum(row["talk_ms"] for row in doc["speakers"]) <= speech + 2 * EDGE * len(silences)
