"""The ONNX Runtime backend on the tiny models: export cache, parity with torch, fingerprints, fork safety.

The engine test matrix (formats, errors, silence, hotwords) runs on both backends in test_engine.py;
here: what is specific to the ONNX path. Random weights: parity is asserted token for token (same
exported network, same features and post-processing), never the words' meaning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from funasr_fleet.engine.onnx.export import STAMP, cache_dir, exported, quantises
from funasr_fleet.engine.pipeline import Engine, directory_digest
from funasr_fleet.engine.transcript import TranscribeOptions
from funasr_fleet.errors import ModelLoadError
from funasr_fleet.settings import EngineSettings

REPO = Path(__file__).resolve().parents[1]


def test_export_is_cached_by_digest_next_to_the_model(onnx_engine: Engine, tiny_models_dir: Path) -> None:
    asr = tiny_models_dir / "asr"
    target = cache_dir(asr, directory_digest(asr), "fp32")
    assert target.parent == tiny_models_dir / "asr-onnx"
    stamp = json.loads((target / STAMP).read_text())
    assert stamp["digest"] == directory_digest(asr) and stamp["source"] == "BiCifParaformer"
    assert (target / stamp["files"]["onnx_model"]).is_file() and stamp["funasr"] and stamp["onnxruntime"]
    before = (target / STAMP).stat().st_mtime_ns
    # a second start finds the export: no exporter subprocess, the same directory untouched
    assert exported(asr, "fp32", digest=directory_digest(asr)) == target
    assert (target / STAMP).stat().st_mtime_ns == before
    # the model dir's own digest (and so the torch fingerprint) does not see the cache beside it
    assert not any(p.suffix == ".onnx" for p in asr.rglob("*"))


def test_onnx_fp32_gives_the_torch_tokens(engine: Engine, onnx_engine: Engine, audio_dir: Path) -> None:
    for options in (TranscribeOptions(), TranscribeOptions(diarize=False)):
        a = engine.transcribe(audio_dir / "dialogue.wav", options)
        b = onnx_engine.transcribe(audio_dir / "dialogue.wav", options)
        assert [s.text for s in a.sentences] == [s.text for s in b.sentences]
        ta = [t for s in a.sentences for t in s.tokens]
        tb = [t for s in b.sentences for t in s.tokens]
        assert [t.text for t in ta] == [t.text for t in tb]
        assert all(
            abs(x.start_ms - y.start_ms) <= 60 and abs(x.end_ms - y.end_ms) <= 60 for x, y in zip(ta, tb, strict=True)
        )
        assert a.speakers == b.speakers


def test_fingerprint_separates_backends_and_quantisation(engine: Engine, onnx_engine: Engine,
                                                         engine_settings: EngineSettings) -> None:  # fmt: skip
    int8 = Engine(engine_settings.model_copy(update={"backend": "onnx", "quantize": "int8"}))
    prints = {engine.identity.fingerprint, onnx_engine.identity.fingerprint, int8.identity.fingerprint}
    assert len(prints) == 3
    again = Engine(engine_settings.model_copy(update={"backend": "onnx"}))
    assert again.identity.fingerprint == onnx_engine.identity.fingerprint


def test_int8_transcribes_with_the_same_shape(engine_settings: EngineSettings, audio_dir: Path) -> None:
    int8 = Engine(engine_settings.model_copy(update={"backend": "onnx", "quantize": "int8"}))
    t = int8.transcribe(audio_dir / "dialogue.wav")
    assert t.sentences and all(s.speaker is not None for s in t.sentences)
    assert any(s.tokens for s in t.sentences)
    assert quantises("BiCifParaformer", "int8") and not quantises("FsmnVADStreaming", "int8")


def test_hotwords_on_a_model_without_hotword_support_change_nothing(onnx_engine: Engine, engine: Engine,
                                                                   audio_dir: Path) -> None:  # fmt: skip
    # BiCifParaformer has no hotword path in FunASR (torch ignores them too); SeACo models use theirs
    plain = onnx_engine.transcribe(audio_dir / "dialogue.wav", TranscribeOptions(diarize=False))
    hot = onnx_engine.transcribe(audio_dir / "dialogue.wav", TranscribeOptions(diarize=False, hotwords=("会议",)))
    assert [s.text for s in plain.sentences] == [s.text for s in hot.sentences]


def test_a_model_class_without_an_onnx_path_is_refused(engine_settings: EngineSettings, tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("model: SenseVoiceSmall\n")
    with pytest.raises(ModelLoadError, match="SenseVoiceSmall has no ONNX backend"):
        Engine(engine_settings.model_copy(update={"backend": "onnx", "model": str(tmp_path)}))


def test_quantize_needs_the_onnx_backend() -> None:
    with pytest.raises(ValueError, match="needs backend = onnx"):
        EngineSettings(quantize="int8")


def test_loading_the_onnx_engine_starts_no_thread(onnx_engine: Engine, engine_env: dict[str, str]) -> None:
    """What makes ``supervisor.preload = "fork"`` safe: the zygote loads the engine (exports cached)
    and must stay at one OS thread; onnxruntime, whose import alone starts a thread, is not imported
    until the first inference in the forked consumer, which then opens sessions with its own threads."""
    code = (
        "import os,sys\n"
        "from funasr_fleet.engine.threads import configure_threads\n"
        "configure_threads(1)\n"
        "from funasr_fleet.settings import load_settings\n"
        "from funasr_fleet.engine.pipeline import Engine\n"
        "e = Engine(load_settings().engine.model_copy(update={'threads': 1}))\n"
        "print('LOADED', len(os.listdir('/proc/self/task')), 'onnxruntime' in sys.modules)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    configure_threads(2)\n"
        "    import numpy as np\n"
        "    t = e.transcribe(np.random.default_rng(0).standard_normal(32000).astype('float32') * 0.01)\n"
        "    s = e._model.model.session.session\n"
        "    print('CHILD', s.get_session_options().intra_op_num_threads, flush=True)\n"
        "    os._exit(0)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print('STATUS', status)\n"
    )
    env = {**os.environ, **engine_env, "FLEET_ENGINE__BACKEND": "onnx", "FLEET_LOG__LEVEL": "WARNING"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(
        ln.split(" ", 1) for ln in out.stdout.splitlines() if ln.split(" ", 1)[0] in ("LOADED", "CHILD", "STATUS")
    )
    assert lines["LOADED"] == "1 False", out.stdout
    assert lines["CHILD"] == "2" and lines["STATUS"] == "0", out.stdout + out.stderr[-2000:]
