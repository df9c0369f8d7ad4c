"""Long audio in windows (engine/windows.py, windowed.py, window_speakers.py, sizing.py).

Pure parts with synthetic inputs (cut choice, clock shifts, speakers from synthetic embeddings
through FunASR's own postprocess/distribute_spk); the tiny engine for the real path (cuts in VAD
silences, words once, progress and cancellation, short files identical to tests/golden/engine-short,
peak RSS of a long file in a subprocess).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from funasr_fleet.engine.pipeline import Engine
from funasr_fleet.engine.sizing import JobEstimate, estimate
from funasr_fleet.engine.speaker_count import SpeakerCount
from funasr_fleet.engine.transcript import ModelIdentity, TranscribeOptions
from funasr_fleet.engine.window_speakers import EmbeddingCollector
from funasr_fleet.engine.windowed import transcribe_windows
from funasr_fleet.engine.windows import choose_cut, clamp_stop, shift_result
from funasr_fleet.errors import AudioTooLong
from funasr_fleet.outputs import OutputMeta, render_bytes
from funasr_fleet.settings import EngineSettings

GOLDEN = Path(__file__).parent / "golden" / "engine-short"
FIXED = ModelIdentity("asr", "vad", "punc", "spk", "funasr", "cpu", "fingerprint")


# --- cut points and clocks (pure) --------------------------------------------------------------------
def test_cut_is_in_the_latest_silence() -> None:
    assert choose_cut([[0, 4000], [4800, 9000], [9900, 29800]], 30_000) == 9450  # latest gap between segments
    assert choose_cut([[0, 4000], [4800, 20000]], 30_000) == (20000 + 29700) // 2  # trailing silence, guarded
    assert choose_cut([[0, 4000], [4100, 29900]], 30_000) is None  # 100 ms: not trusted; speech to the end
    assert choose_cut([], 30_000) == 15_000  # no speech at all
    assert choose_cut([[0, 5000], [3000, 12000], [12500, 29990]], 30_000) == 12250  # overlaps use the reach


def test_stops_are_whole_milliseconds_and_leave_no_stub() -> None:
    assert clamp_stop(0, 16 * 1000 + 7, 16000 * 100) == 16 * 1000
    assert clamp_stop(0, 16000 * 99, 16000 * 100) == 16000 * 100  # 1 s left: joins this window


def test_shift_moves_shared_stamp_lists_once() -> None:
    pair = [100, 200]
    raw: dict[str, Any] = {
        "timestamp": [pair, [300, 400]],
        "sentence_info": [{"start": 100, "end": 400, "timestamp": [pair]}],
    }
    shift_result(raw, 60_000)
    assert raw["timestamp"] == [[60100, 60200], [60300, 60400]]
    assert raw["sentence_info"][0]["start"] == 60100 and raw["sentence_info"][0]["timestamp"] == [[60100, 60200]]


# --- the windowed run over a synthetic backend --------------------------------------------------------
class _FakeModel:
    cb_model: Any = None


class FakeBackend:
    """Words are bursts of constant amplitude (value = word id + 1, negative for voice B); VAD finds the
    bursts; the 'ASR' gives one token and one sentence per burst; embeddings go
    through FunASR's own cb_model/postprocess calls like its pipeline does."""

    def __init__(self) -> None:
        self.model = _FakeModel()
        self.calls: list[int] = []

    @staticmethod
    def bursts(samples: np.ndarray) -> list[tuple[int, int, float]]:
        edges = np.flatnonzero(np.diff(np.concatenate([[0.0], samples, [0.0]]) != 0))
        out = []
        for a, b in zip(edges[::2], edges[1::2], strict=False):
            out.append((int(a), int(b), float(samples[a])))
        return out

    def speech_segments(self, samples: np.ndarray) -> list[list[int]]:
        return [[a // 16, b // 16] for a, b, _ in self.bursts(samples)]

    def generate_window(self, samples: np.ndarray, options: TranscribeOptions, collector: Any) -> dict[str, Any]:
        self.calls.append(len(samples))
        words = self.bursts(samples)
        stamps = [[a // 16, b // 16] for a, b, _ in words]
        text = [f"w{round(abs(v) * 1000)}" for _, _, v in words]
        items = [
            {"start": a, "end": b, "text": w + ".", "timestamp": [[a, b]]}
            for (a, b), w in zip(stamps, text, strict=False)
        ]
        if collector is not None and words:
            import funasr.auto.auto_model as auto_model

            with collector.installed(self.model):
                chunks = [[a / 16000, b / 16000, None] for a, b, _ in words]
                voice = np.array([[1.0, 0.1, 0.0] if v > 0 else [0.0, 0.1, 1.0] for _, _, v in words], np.float32)
                labels = self.model.cb_model(voice)
                auto_model.postprocess(chunks, None, labels, voice)
        return {"text": " ".join(text), "timestamp": stamps, "sentence_info": items}


def _bursts_audio(seconds: float, words: list[tuple[float, float, int]]) -> np.ndarray:
    audio = np.zeros(int(seconds * 16000), np.float32)
    for i, (start, end, voice) in enumerate(words):
        audio[int(start * 16000) : int(end * 16000)] = (i + 1) / 1000 * voice
    return audio


def test_words_across_a_window_edge_appear_once_with_their_times() -> None:
    # 60 s windows; the word at 59.4..60.7 s runs over the nominal edge; voices alternate word by word
    words = [(t, t + 1.3, 1 if k % 2 == 0 else -1) for k, t in enumerate(np.arange(1.9, 148.0, 2.5))]
    assert any(a < 60 < b for a, b, _ in words)
    audio = _bursts_audio(150, words)
    backend = FakeBackend()
    fractions: list[float] = []
    found, clustering = transcribe_windows(
        backend, lambda a, b: audio[a:b], len(audio), TranscribeOptions(), count=SpeakerCount(), diarized=True,
        window_s=60, max_pause_ms=800, progress=fractions.append,
    )  # fmt: skip
    expected = [(a // 16, b // 16) for a, b, _ in FakeBackend.bursts(audio)]
    got = [(t.start_ms, t.end_ms) for s in found for t in s.tokens]
    assert got == expected  # every word once, on the recording's clock
    assert len(backend.calls) >= 3 and all(n <= 62 * 16000 for n in backend.calls)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) == len(backend.calls)
    # speakers: one clustering, consistent across windows (voice A bursts are positive)
    assert clustering is not None and clustering.speakers == 2
    voice_of = {(a // 16): v > 0 for a, _, v in FakeBackend.bursts(audio)}
    by_voice: dict[bool, set[int | None]] = {True: set(), False: set()}
    for s in found:
        by_voice[voice_of[s.start_ms]].add(s.speaker)
    assert len(by_voice[True]) == 1 and len(by_voice[False]) == 1 and by_voice[True] != by_voice[False]


def test_progress_exception_stops_between_windows() -> None:
    audio = _bursts_audio(200, [(t, t + 1.0, 1) for t in np.arange(1.0, 199.0, 3.0)])
    backend = FakeBackend()

    class Cancelled(Exception):
        pass

    def progress(fraction: float) -> None:
        raise Cancelled(fraction)

    with pytest.raises(Cancelled):
        transcribe_windows(backend, lambda a, b: audio[a:b], len(audio), TranscribeOptions(diarize=False),
                           count=SpeakerCount(), diarized=False, window_s=60, max_pause_ms=800, progress=progress)  # fmt: skip
    assert len(backend.calls) == 1


def test_collector_answers_placeholders() -> None:
    c = EmbeddingCollector()
    assert c(np.ones((3, 4))).tolist() == [0, 0, 0] and c.take() == ([], None)


# --- memory estimate ---------------------------------------------------------------------------------
def test_estimate_is_bounded_by_the_window() -> None:
    short = estimate(600, window_s=300, diarize=True, base_mb=500)
    long = estimate(4 * 3600, window_s=300, diarize=True, base_mb=500)
    assert short.windows == 2 and long.windows == 48
    assert long.peak_rss_mb - short.peak_rss_mb < 0.5 * short.peak_rss_mb  # only the accumulated results grow
    assert estimate(600, window_s=300, diarize=False, base_mb=500).peak_rss_mb < short.peak_rss_mb
    JobEstimate(60, 300, 1, 900.0, None).check()
    with pytest.raises(AudioTooLong, match="max_memory_mb"):
        replace(long, limit_mb=100).check()


def test_engine_check_memory(engine_settings: EngineSettings) -> None:
    from tests.fixtures.models import TINY_MODELS_DIR  # noqa: F401 - the session engine fixture needs it built

    eng = Engine(engine_settings.model_copy(update={"max_memory_mb": 100}))
    with pytest.raises(AudioTooLong):
        eng.check_memory(3600, TranscribeOptions())
    ok = Engine(engine_settings).check_memory(3600, TranscribeOptions())
    assert ok.fits and ok.peak_rss_mb > eng.base_rss_mb


# --- the real engine ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip49(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from funasr_fleet.devaudio import missing_tools, synth_speech

    if missing_tools():
        pytest.skip("espeak-ng/sox/ffmpeg missing")
    return synth_speech(tmp_path_factory.mktemp("win") / "dialogue45.wav", 45)  # 49.75 s


@pytest.mark.parametrize("case", ["diarized", "no_diarization", "two_speakers"])
def test_short_file_is_byte_identical_to_golden(engine: Engine, clip49: Path, case: str) -> None:
    """One window: exactly the one-call path of before windows (goldens written by that code)."""
    options = {"diarized": TranscribeOptions(), "no_diarization": TranscribeOptions(diarize=False),
               "two_speakers": TranscribeOptions(num_speakers=2)}[case]  # fmt: skip
    fractions: list[float] = []
    t = replace(engine.transcribe(clip49, options, progress=fractions.append), wall_s=0.0, decode_s=0.0, model=FIXED)
    assert fractions == [1.0]
    for fmt in ("json", "srt", "txt", "rttm", "vtt"):
        got = render_bytes(fmt, t, OutputMeta(source="dialogue.wav"))
        assert got == (GOLDEN / f"{case}.{fmt}").read_bytes(), f"{case}.{fmt} differs"


def test_windows_cut_in_silence_and_keep_every_word_once(engine_settings: EngineSettings, clip49: Path) -> None:
    small = Engine(engine_settings.model_copy(update={"window_s": 20.0}))
    fractions: list[float] = []
    t = small.transcribe(clip49, TranscribeOptions(num_speakers=2), progress=fractions.append)
    assert len(fractions) >= 2 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    tokens = [tok for s in t.sentences for tok in s.tokens]
    starts = [tok.start_ms for tok in tokens]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)  # no word twice
    assert all(
        s.start_ms <= tok.start_ms <= tok.end_ms <= s.end_ms <= t.duration_ms for s in t.sentences for tok in s.tokens
    )
    one = small.transcribe(clip49, TranscribeOptions(diarize=False))  # same engine, no speakers
    whole = Engine(engine_settings).transcribe(clip49, TranscribeOptions(diarize=False))
    assert (
        abs(len([x for s in one.sentences for x in s.tokens]) - len([x for s in whole.sentences for x in s.tokens]))
        <= 12
    )
    assert t.speakers and all(s.speaker in t.speakers for s in t.sentences)


def test_window_cuts_avoid_whole_file_speech(engine: Engine, clip49: Path) -> None:
    from funasr_fleet.engine import windowed
    from funasr_fleet.engine.audio import decode

    with decode(clip49) as source:
        speech = engine.speech_segments(source.read())
        cuts: list[int] = []

        @contextmanager
        def spying() -> Any:
            original = windowed._cut

            def cut(*args: Any) -> int:
                cuts.append(original(*args))
                return cuts[-1]

            windowed._cut = cut  # type: ignore[assignment]
            try:
                yield
            finally:
                windowed._cut = original

        small = Engine(engine.settings.model_copy(update={"window_s": 15.0}))
        with spying():
            small.transcribe(source, TranscribeOptions(diarize=False))
    assert len(cuts) >= 2
    for c in cuts:
        ms = c // 16
        assert not any(s < ms < e for s, e in speech), f"cut at {ms} ms inside speech {speech}"


@pytest.mark.slow
def test_peak_rss_of_a_long_file_stays_bounded(engine_env: dict[str, str]) -> None:
    """12 minutes in 60 s windows, measured in a fresh process: peak RSS stays near the
    model-loaded base (the whole file as float32 alone would be 46 MB; FunASR's one call held ~0.7 GB at 10 min)."""
    from benchmarks.long import speech

    path = speech(12)
    env = {**os.environ, **engine_env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "benchmarks.long", "--worker", str(path), "--window-s", "60"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["windows"] >= 10 and row["sentences"] > 100
    assert row["peak_mb"] <= row["base_mb"] + 450, row
    assert row["peak_mb"] <= 1.3 * row["estimate_mb"], row
