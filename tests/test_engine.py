"""The engine on FunASR's real code path (tiny random models + the real fsmn-vad).

Random weights: assert structure, timing and typed errors, never the words.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from funasr_fleet.engine.audio import decode
from funasr_fleet.engine.pipeline import Engine, directory_digest, resolve_model_ref
from funasr_fleet.engine.transcript import TranscribeOptions, Transcript
from funasr_fleet.errors import AudioTooShort, EmptyAudio, ModelLoadError, NoAudioStream, UndecodableAudio
from funasr_fleet.settings import EngineSettings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["torch", "onnx"])
def backend_engine(request: pytest.FixtureRequest, engine: Engine) -> Engine:
    """The same test on each backend: the engine behaviour (formats, errors, shapes) must not depend on it."""
    return engine if request.param == "torch" else request.getfixturevalue("onnx_engine")


def assert_well_formed(t: Transcript, *, diarized: bool) -> None:
    assert t.duration_ms > 0 and t.wall_s > 0
    prev_start = -1
    for s in t.sentences:
        assert 0 <= s.start_ms <= s.end_ms <= t.duration_ms
        assert s.start_ms >= prev_start
        prev_start = s.start_ms
        assert s.text.strip()
        if diarized:
            assert isinstance(s.speaker, int) and s.speaker >= 0
        else:
            assert s.speaker is None
        last = -1
        for tok in s.tokens:
            assert tok.start_ms <= tok.end_ms and tok.start_ms >= last and tok.text
            last = tok.start_ms
    assert t.speakers == tuple(sorted({s.speaker for s in t.sentences if s.speaker is not None}))
    if t.speakers:
        assert t.speakers[0] == 0 and list(t.speakers) == list(range(len(t.speakers)))  # first to speak is 0
    # turns partition the sentences in order
    covered = [i for turn in t.turns for i in range(turn.first_sentence, turn.last_sentence + 1)]
    assert covered == list(range(len(t.sentences)))
    for turn in t.turns:
        members = t.sentences[turn.first_sentence : turn.last_sentence + 1]
        assert {m.speaker for m in members} == {turn.speaker}
        assert turn.start_ms == members[0].start_ms and turn.end_ms >= members[-1].end_ms


def test_dialogue_transcript_is_well_formed(backend_engine: Engine, audio_dir: Path) -> None:
    t = backend_engine.transcribe(audio_dir / "dialogue.wav")
    assert len(t.sentences) >= 2
    assert_well_formed(t, diarized=True)
    assert t.model is backend_engine.identity and t.options == TranscribeOptions()
    assert any(s.tokens for s in t.sentences)  # BiCifParaformer gives per-token times
    assert t.decode_s > 0 and abs(t.duration_ms - decode(audio_dir / "dialogue.wav").duration_ms) <= 1


@pytest.mark.parametrize(
    "name",
    ["dialogue.mp3", "dialogue.m4a", "dialogue.mp4", "dialogue.mov", "dialogue.flac", "dialogue.ogg",
     "dialogue.opus", "dialogue.webm", "stereo44k.wav", "8k.wav"],
)  # fmt: skip
def test_every_format_transcribes(backend_engine: Engine, audio_dir: Path, name: str) -> None:
    t = backend_engine.transcribe(audio_dir / name)
    assert t.sentences
    assert_well_formed(t, diarized=True)


def test_same_audio_same_transcript_for_path_array_and_decoded(backend_engine: Engine, audio_dir: Path) -> None:
    path = audio_dir / "dialogue.flac"
    decoded = decode(path)
    a = backend_engine.transcribe(path)
    b = backend_engine.transcribe(decoded)
    c = backend_engine.transcribe(decoded.samples.copy())
    assert a.sentences == b.sentences == c.sentences
    assert a.turns == b.turns == c.turns


def test_no_diarization_leaves_speakers_unset(backend_engine: Engine, audio_dir: Path) -> None:
    t = backend_engine.transcribe(audio_dir / "dialogue.wav", TranscribeOptions(diarize=False))
    assert t.sentences and t.speakers == ()
    assert_well_formed(t, diarized=False)
    assert all(turn.speaker is None for turn in t.turns)
    # and the speaker stage is back for the next call
    assert backend_engine.transcribe(audio_dir / "dialogue.wav").speakers


def test_options_num_speakers_hotwords_language(backend_engine: Engine, audio_dir: Path) -> None:
    opts = TranscribeOptions(hotwords=("revenue", "margin"), num_speakers=2, language="en")
    t = backend_engine.transcribe(audio_dir / "dialogue.wav", opts)
    assert_well_formed(t, diarized=True)
    assert set(t.speakers) <= {0, 1}
    assert t.options == opts and t.language == "en"


def test_num_speakers_on_longer_audio(backend_engine: Engine, tmp_path: Path) -> None:
    from tests.fixtures.audio import synth_speech

    path = synth_speech(tmp_path / "long.wav", 40)
    t = backend_engine.transcribe(path, TranscribeOptions(num_speakers=2))
    assert_well_formed(t, diarized=True)
    assert t.duration_ms >= 40_000 and set(t.speakers) <= {0, 1}


def test_silence_gives_an_empty_valid_transcript(backend_engine: Engine, audio_dir: Path) -> None:
    t = backend_engine.transcribe(audio_dir / "silence.wav")
    assert t.sentences == () and t.turns == () and t.speakers == () and t.text == ""
    assert t.duration_ms == 3000
    assert [w.code for w in t.warnings] == ["no_speech"] and "3.0 s" in t.warnings[0].message


@pytest.mark.parametrize(
    ("name", "error"),
    [("short.wav", AudioTooShort), ("not_audio.wav", UndecodableAudio), ("no_audio.mp4", NoAudioStream),
     ("empty.wav", EmptyAudio), ("corrupt.mp3", UndecodableAudio)],
)  # fmt: skip
def test_bad_audio_raises_typed_errors(
    backend_engine: Engine, audio_dir: Path, name: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        backend_engine.transcribe(audio_dir / name)


def test_short_array_is_rejected(backend_engine: Engine) -> None:
    with pytest.raises(AudioTooShort):
        backend_engine.transcribe(np.zeros(1600, dtype=np.float32))


def test_engine_refuses_a_second_thread(engine: Engine, audio_dir: Path) -> None:
    engine.transcribe(audio_dir / "silence.wav")  # binds to this (the main) thread
    errors: list[BaseException] = []

    def other() -> None:
        try:
            engine.transcribe(audio_dir / "silence.wav")
        except BaseException as exc:  # noqa: BLE001 - collected for the assert
            errors.append(exc)

    th = threading.Thread(target=other)
    th.start()
    th.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError) and "thread" in str(errors[0])


def test_identity_fingerprint(engine: Engine, engine_settings: EngineSettings, tiny_models_dir: Path) -> None:
    ident = engine.identity
    assert len(ident.fingerprint) == 64 and int(ident.fingerprint, 16) >= 0
    assert ident.asr == str(tiny_models_dir / "asr") and ident.device == "cpu" and ident.funasr_version
    # changes with an output-relevant setting
    other = Engine(engine_settings.model_copy(update={"max_end_silence_ms": 500}))
    assert other.identity.fingerprint != ident.fingerprint


def test_fingerprint_follows_content_not_location(engine: Engine, engine_settings: EngineSettings,
                                                  tiny_models_dir: Path, tmp_path: Path) -> None:  # fmt: skip
    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny_models_dir, moved)
    update = {"model": str(moved / "asr"), "vad_model": str(moved / "vad"), "punc_model": str(moved / "punc"),
              "spk_model": str(moved / "spk")}  # fmt: skip
    same = Engine(engine_settings.model_copy(update=update))
    assert same.identity.fingerprint == engine.identity.fingerprint
    assert same.identity.asr == str(moved / "asr")
    cfg = moved / "punc" / "config.yaml"
    cfg.write_text(cfg.read_text() + "\n# changed\n")
    changed = Engine(engine_settings.model_copy(update=update))
    assert changed.identity.fingerprint != engine.identity.fingerprint


def test_fingerprint_is_stable_across_processes(engine: Engine, engine_env: dict[str, str]) -> None:
    code = (
        "from funasr_fleet.settings import load_settings;from funasr_fleet.engine.pipeline import Engine;"
        "print('FP', Engine(load_settings().engine).identity.fingerprint)"
    )
    env = {**os.environ, **engine_env, "FLEET_LOG__LEVEL": "WARNING"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("FP ")]
    assert line == [f"FP {engine.identity.fingerprint}"]


def test_directory_digest_samples_big_files(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("model: X\n")
    big = tmp_path / "model.pt"
    big.write_bytes(b"\0" * (9 * 1024 * 1024))
    first = directory_digest(tmp_path)
    assert directory_digest(tmp_path) == first
    with big.open("r+b") as f:  # a change in the last MiB is seen
        f.seek(9 * 1024 * 1024 - 10)
        f.write(b"x")
    assert directory_digest(tmp_path) != first


def test_model_refs(tmp_path: Path, tiny_models_dir: Path) -> None:
    assert resolve_model_ref("paraformer-zh", "model", required=True) == "paraformer-zh"
    assert resolve_model_ref("iic/speech_fsmn_vad", "vad_model", required=True) == "iic/speech_fsmn_vad"
    assert resolve_model_ref("", "punc_model", required=False) is None
    assert resolve_model_ref(str(tiny_models_dir / "asr"), "model", required=True) == str(tiny_models_dir / "asr")
    with pytest.raises(ModelLoadError, match=r"FLEET_ENGINE__MODEL=/x/nope: no such directory"):
        resolve_model_ref("/x/nope", "model", required=True)
    with pytest.raises(ModelLoadError, match=r"FLEET_ENGINE__SPK_MODEL=\./nope"):
        resolve_model_ref("./nope", "spk_model", required=False)
    with pytest.raises(ModelLoadError, match=r"no config\.yaml"):
        resolve_model_ref(str(tmp_path), "model", required=True)
    with pytest.raises(ModelLoadError, match="FLEET_ENGINE__VAD_MODEL is empty"):
        resolve_model_ref("", "vad_model", required=True)


def test_missing_model_dir_fails_before_loading(engine_settings: EngineSettings) -> None:
    with pytest.raises(ModelLoadError) as info:
        Engine(engine_settings.model_copy(update={"model": "/nonexistent/asr"}))
    assert info.value.code == "model_load_failed" and "FLEET_ENGINE__MODEL=/nonexistent/asr" in str(info.value)


def test_broken_model_dir_is_a_model_load_error(engine_settings: EngineSettings, tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("model: NoSuchModelClass\n")
    with pytest.raises(ModelLoadError, match="loading the FunASR pipeline failed"):
        Engine(engine_settings.model_copy(update={"punc_model": str(tmp_path)}))


def test_without_punctuation_and_speaker_models(engine_settings: EngineSettings, audio_dir: Path) -> None:
    bare = Engine(engine_settings.model_copy(update={"punc_model": "", "spk_model": ""}))
    assert not bare.diarization_available and bare.identity.punc == "" and bare.identity.spk == ""
    t = bare.transcribe(audio_dir / "dialogue.wav")  # diarize requested but unavailable: no speakers
    assert t.sentences and t.speakers == ()
    assert_well_formed(t, diarized=False)


def test_speaker_without_punctuation_uses_vad_segments(engine_settings: EngineSettings, audio_dir: Path) -> None:
    e = Engine(engine_settings.model_copy(update={"punc_model": ""}))
    t = e.transcribe(audio_dir / "dialogue.wav")
    assert t.sentences
    assert_well_formed(t, diarized=True)


def test_warmup_does_not_bind_the_thread(engine_settings: EngineSettings, audio_dir: Path) -> None:
    e = Engine(engine_settings)
    assert e.warmup() > 0
    result: list[Transcript] = []
    th = threading.Thread(target=lambda: result.append(e.transcribe(audio_dir / "dialogue.wav")))
    th.start()
    th.join()
    assert result and result[0].sentences


def test_configure_threads_sets_env_before_torch(tmp_path: Path) -> None:
    code = (
        "import os,sys;from funasr_fleet.engine.threads import configure_threads;"
        "assert 'torch' not in sys.modules;n=configure_threads(1);import torch;"
        "print(n, os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'], os.environ['OPENBLAS_NUM_THREADS'],"
        "os.environ['OMP_WAIT_POLICY'], torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1", "1", "1", "PASSIVE", "1"]


def test_default_threads_are_the_usable_cores() -> None:
    from funasr_fleet.engine.threads import resolve_threads
    from funasr_fleet.settings import usable_cores

    assert resolve_threads(None) == usable_cores() and resolve_threads(3) == 3


@pytest.mark.slow
def test_45_minutes_of_speech(engine: Engine, tmp_path: Path) -> None:
    """The long case: decode + transcribe 45 minutes; reports time and peak RSS."""
    import time

    from tests.fixtures.audio import synth_speech

    path = synth_speech(tmp_path / "45min.wav", 45 * 60)
    start = time.perf_counter()
    t = engine.transcribe(path)
    wall = time.perf_counter() - start
    status = Path("/proc/self/status").read_text()
    rss = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:"))) / 1024
    assert t.duration_ms >= 45 * 60 * 1000 - 1000 and len(t.sentences) > 100
    assert_well_formed(t, diarized=True)
    print(json.dumps({"audio_s": t.duration_ms / 1000, "wall_s": round(wall, 1), "rtf": round(t.real_time_factor, 4),
                      "sentences": len(t.sentences), "speakers": len(t.speakers), "peak_rss_mib": round(rss)}))  # fmt: skip
