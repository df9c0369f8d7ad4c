"""The tiny models: FunASR's real classes at toy sizes (~0.3 M parameters), for tests and demos.

- ``asr``: a seeded random BiCifParaformer (Paraformer with timestamps), ~0.3 M parameters;
- ``punc``: a seeded random CT-Transformer punctuation model biased to emit mostly "no punctuation";
- ``spk``: a seeded random CAM++ speaker-embedding model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from funasr_fleet.devmodels import paraformer
from funasr_fleet.devmodels.files import instantiate, param_count, write_dir

VERSION = "tiny-models-2"
SEED = 20261128

# Chinese characters, as paraformer-zh emits them: one token per character, so the punctuation
# model's tokens align one-to-one with the ASR timestamps (FunASR's sentence splitter needs that).
_ASR_CHARS = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可也你说"
_PUNC_LIST = ["<unk>", "_", "，", "。", "？", "、"]


def _write(path: Path, config: dict[str, Any], state: dict[str, Any], metas: dict[str, Any], **kw: Any) -> None:
    write_dir(path, config, state, metas, stamp={"tiny": True, "version": VERSION}, **kw)


ASR_TOKENS = ["<blank>", "<s>", "</s>", *_ASR_CHARS, "<unk>"]


def asr_config(dim: int = 64) -> dict[str, Any]:
    """The tiny ASR's FunASR config (a BiCifParaformer ``dim`` wide); the SeACo variant extends it."""
    return {
        "model": "BiCifParaformer",
        "model_conf": paraformer.model_conf(),
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
        **paraformer.head_and_frontend(dim),
    }


def build_asr(path: Path) -> int:
    tokens = ASR_TOKENS
    config = asr_config()
    import torch

    torch.manual_seed(SEED)
    model = instantiate(config, input_size=80 * 7, vocab_size=len(tokens))
    with torch.no_grad():
        # Random CIF weights fire almost never or on every frame; a negative bias gives roughly
        # a few tokens per second, like speech.
        model.predictor.cif_output.bias.fill_(-1.4)
        model.predictor.cif_output2.bias.fill_(-1.4)
    state = model.state_dict()
    _write(
        path,
        config,
        state,
        {"tokenizer_conf": {"token_list": "tokens.json"}, "frontend_conf": {"cmvn_file": "am.mvn"}},
        tokens=tokens,
        cmvn_dim=80 * 7,
    )
    return param_count(state)


def build_punc(path: Path) -> int:
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
            "num_blocks": 2,  # FunASR's ONNX exporter needs a block after the first
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
    model = instantiate(config, vocab_size=len(tokens))
    with torch.no_grad():
        # Mostly "_" (no punctuation), sometimes "，" or "。": sentences of a plausible length
        # (a sentence end every ~6 tokens, measured). The decoder takes the argmax, so the
        # random weights must sometimes outvote the "_" bias.
        model.decoder.weight.mul_(1.8)
        model.decoder.bias.copy_(torch.tensor([-20.0, 2.0, 0.0, 0.2, -20.0, -20.0]))
    state = model.state_dict()
    _write(path, config, state, {"tokenizer_conf": {"token_list": "tokens.json"}}, tokens=tokens)
    return param_count(state)


def build_spk(path: Path) -> int:
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
    model = instantiate(config)
    state = model.state_dict()
    _write(path, config, state, {})
    return param_count(state)
