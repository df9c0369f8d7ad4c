"""A tiny SeACo-Paraformer (FunASR's hotword-capable ASR) for tests of FunASR's hotword code path.

``build_tiny_seaco(DIR)`` adds ``DIR/seaco`` beside the tiny set of ``build_tiny_models`` (whose
files it does not touch): the tiny ASR's architecture as FunASR's ``SeacoParaformer``, seeded
random weights. Use it with the tiny vad/punc/spk as ``FLEET_ENGINE__MODEL``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from funasr_fleet.devmodels.files import instantiate, write_dir
from funasr_fleet.devmodels.tiny import ASR_TOKENS, SEED, asr_config

SEACO = "seaco"
VERSION = "tiny-seaco-1"
STAMP = "fleet-tiny-seaco.json"


def seaco_config(dim: int, no_bias: int) -> dict[str, Any]:
    """The tiny ASR's config as a SeacoParaformer (bias encoder + SeACo decoder); ``no_bias``: the
    token id meaning "no hotword"."""
    config = asr_config(dim)
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


def build_tiny_seaco(root: Path | str, *, force: bool = False) -> Path:
    """Write (or reuse) ``root/seaco``; returns its absolute path. Built aside and renamed into place."""
    from funasr_fleet.devmodels import install_lock

    root = Path(root).expanduser().resolve()
    target = root / SEACO
    if not force and _complete(root):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".seaco-", dir=root))
    try:
        import torch

        with torch.random.fork_rng():
            _build(tmp / SEACO)
        with install_lock(target):
            if not force and _complete(root):
                return target
            (root / STAMP).unlink(missing_ok=True)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp / SEACO, target)
            (root / STAMP).write_text(json.dumps({"version": VERSION, "seed": SEED + 3}) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _complete(root: Path) -> bool:
    try:
        stamp = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("version") == VERSION and all(
        (root / SEACO / f).is_file() for f in ("config.yaml", "model.pt", "tokens.json", "am.mvn")
    )


def _build(path: Path) -> None:
    import torch

    torch.manual_seed(SEED + 3)
    model = instantiate(seaco_config(64, no_bias=len(ASR_TOKENS) - 1), input_size=80 * 7, vocab_size=len(ASR_TOKENS))
    with torch.no_grad():
        model.predictor.cif_output.bias.fill_(-1.4)  # a speech-like token rate, as for the tiny ASR
        model.predictor.cif_output2.bias.fill_(-1.4)
    metas = {"tokenizer_conf": {"token_list": "tokens.json"}, "frontend_conf": {"cmvn_file": "am.mvn"}}
    write_dir(path, seaco_config(64, no_bias=len(ASR_TOKENS) - 1), model.state_dict(), metas,
              stamp={"tiny": True, "version": VERSION}, tokens=ASR_TOKENS, cmvn_dim=80 * 7)  # fmt: skip
