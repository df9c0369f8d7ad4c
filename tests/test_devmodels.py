"""The development model builder: deterministic bytes, the real sizes, loadable through AutoModel's path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from funasr_fleet.devmodels import STAGES, build_models, is_complete, stamp


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "fleet-tiny-models.json"
    }


def test_tiny_build_is_deterministic(tmp_path: Path, tiny_models_dir: Path) -> None:
    again = build_models(tmp_path / "tiny", "tiny")
    assert is_complete(again.root, "tiny") and not is_complete(again.root, "full")
    assert _digests(again.root) == {k: v for k, v in _digests(tiny_models_dir).items() if k.split("/")[0] in STAGES}


def test_unknown_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model size"):
        build_models(tmp_path, "huge")  # type: ignore[arg-type]


@pytest.mark.slow
def test_full_build_is_deterministic_real_size_and_loads(tmp_path: Path) -> None:
    """~2 x 25 s to build (2 x 2 GB on disk), ~20 s to load: slow."""
    from funasr_fleet.engine.pipeline import Engine
    from funasr_fleet.settings import EngineSettings
    from tests.fixtures.audio import synth_speech

    a = build_models(tmp_path / "a", "full")
    b = build_models(tmp_path / "b", "full")
    assert _digests(a.root) == _digests(b.root)
    params = stamp(a.root)["params"]
    assert isinstance(params, dict)
    assert 240e6 < params["asr"] < 255e6  # SeACo-Paraformer-large (paraformer-zh)
    assert 275e6 < params["punc"] < 290e6  # CT-Transformer large (ct-punc), mostly its 471,067-token embedding
    assert 6e6 < params["spk"] < 8e6  # CAM++
    engine = Engine(EngineSettings(model=str(a.asr), vad_model=str(a.vad), punc_model=str(a.punc),
                                   spk_model=str(a.spk), threads=1))  # fmt: skip
    t = engine.transcribe(synth_speech(tmp_path / "speech.wav", 20))
    tokens = sum(len(s.tokens) for s in t.sentences)
    speech_s = t.duration_ms / 1000
    assert t.sentences and 1.0 < tokens / speech_s < 8.0  # the CIF bias: a few tokens per second
