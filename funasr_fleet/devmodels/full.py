"""The full-size models: the real architectures and sizes of FunASR's default production set.

Random (seeded) weights, so the words are meaningless, but the compute, the memory and the load
time are those of the real models:

- ``asr``: SeACo-Paraformer-large as FunASR's ``paraformer-zh`` resolves to
  (speech_seaco_paraformer_large_asr_nat-zh-cn-16k-common-vocab8404): SAN-M encoder of 50 blocks,
  512 wide, 4 heads, 2048 feed-forward; SAN-M decoder of 16 blocks; CifPredictorV3 with the
  upsampled timestamp head; SeACo hotword LSTM and decoder; 8404 tokens (~220 M parameters).
- ``punc``: CT-Transformer as ``ct-punc`` (punc_ct-transformer_cn-en-common-vocab471067-large):
  471,067-entry vocabulary, 516-wide embedding, 12 SAN-M blocks, 12 heads (~290 M parameters,
  most of them the embedding table, which costs memory and load time but little compute).
- ``spk``: CAM++ with the sizes of ``cam++`` (speech_campplus_sv_zh-cn_16k-common), ~7 M parameters.

Biases that make random weights behave like speech models (checked on espeak speech, see
docs/drafts/onnx.md): the CIF predictor fires a few tokens per second, the punctuation head emits
mostly "no punctuation" with a sentence end every ten to twenty tokens, and the SeACo hotword head
predicts "no bias" (as the trained model does without matching hotwords).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from funasr_fleet.devmodels import paraformer
from funasr_fleet.devmodels.files import instantiate, param_count, write_dir

VERSION = "full-models-1"
SEED = 20261201

ASR_VOCAB = 8404
PUNC_VOCAB = 471067
NO_BIAS = 8377  # the "no hotword" token of the real model (model_conf.NO_BIAS)
CIF_BIAS = -1.0  # measured: ~3-4 tokens per second of speech (see build_asr)
CIF_BIAS2 = -1.0
_PUNC_LIST = ["<unk>", "_", "，", "。", "？", "、"]
_SAN_M = {
    "dropout_rate": 0.1,
    "positional_dropout_rate": 0.1,
    "input_layer": "pe",
    "pos_enc_class": "SinusoidalPositionEncoder",
    "normalize_before": True,
    "kernel_size": 11,
    "sanm_shfit": 0,
    "selfattention_layer_type": "sanm",
}


def _write(path: Path, config: dict[str, Any], state: dict[str, Any], metas: dict[str, Any], **kw: Any) -> None:
    write_dir(path, config, state, metas, stamp={"size": "full", "version": VERSION}, **kw)


def asr_tokens() -> list[str]:
    """8404 tokens like paraformer-zh's: specials, then single CJK characters (one token each)."""
    chars = [chr(0x4E00 + i) for i in range(ASR_VOCAB - 4)]
    return ["<blank>", "<s>", "</s>", *chars, "<unk>"]


def punc_tokens() -> list[str]:
    """471,067 entries: the ASR's characters first (so its output maps to known ids), then filler words."""
    chars = asr_tokens()[3:-1]
    fill = PUNC_VOCAB - 4 - len(chars)
    return ["<blank>", "<s>", "</s>", *chars, *(f"w{i:06d}" for i in range(fill)), "<unk>"]


def asr_config() -> dict[str, Any]:
    return {
        "model": "SeacoParaformer",
        "model_conf": {
            **paraformer.model_conf(),
            "inner_dim": 512,
            "bias_encoder_type": "lstm",
            "bias_encoder_bid": False,
            "seaco_lsm_weight": 0.1,
            "seaco_length_normalized_loss": True,
            "train_decoder": True,
            "NO_BIAS": NO_BIAS,
        },
        "encoder": "SANMEncoder",
        "encoder_conf": {
            "output_size": 512,
            "attention_heads": 4,
            "linear_units": 2048,
            "num_blocks": 50,
            "attention_dropout_rate": 0.1,
            **_SAN_M,
        },
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {
            "attention_heads": 4,
            "linear_units": 2048,
            "num_blocks": 16,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "self_attention_dropout_rate": 0.1,
            "src_attention_dropout_rate": 0.1,
            "att_layer_num": 16,
            "kernel_size": 11,
            "sanm_shfit": 0,
        },
        "seaco_decoder": "ParaformerSANMDecoder",
        "seaco_decoder_conf": {
            "attention_heads": 4,
            "linear_units": 1024,
            "num_blocks": 4,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "self_attention_dropout_rate": 0.1,
            "src_attention_dropout_rate": 0.1,
            "att_layer_num": 6,
            "kernel_size": 21,
            "sanm_shfit": 0,
            "use_output_layer": False,
            "wo_input_layer": True,
        },
        **paraformer.head_and_frontend(512),
    }


def build_asr(path: Path) -> int:
    """Write the SeACo-Paraformer-large directory; returns its parameter count."""
    import torch

    tokens = asr_tokens()
    config = asr_config()
    torch.manual_seed(SEED)
    model = instantiate(config, input_size=80 * 7, vocab_size=len(tokens))
    with torch.no_grad():
        # Random CIF weights fire almost never or on every frame; these biases give ~3-4 tokens
        # per second of espeak speech (benchmarks/backends.py --token-rate measures it).
        model.predictor.cif_output.bias.fill_(CIF_BIAS)
        model.predictor.cif_output2.bias.fill_(CIF_BIAS2)
        # The trained hotword head answers "no bias" unless a hotword matches; random weights
        # would replace the decoder's tokens with the hotword head's on every position.
        model.hotword_output_layer.bias.zero_()
        model.hotword_output_layer.bias[NO_BIAS] = 30.0
    state = model.state_dict()
    del model
    metas = {"tokenizer_conf": {"token_list": "tokens.json"}, "frontend_conf": {"cmvn_file": "am.mvn"}}
    _write(path, config, state, metas, tokens=tokens, cmvn_dim=80 * 7)
    return param_count(state)


def punc_config() -> dict[str, Any]:
    return {
        "model": "CTTransformer",
        "model_conf": {
            "ignore_id": 0,
            "embed_unit": 516,
            "att_unit": 516,
            "dropout_rate": 0.1,
            "punc_list": list(_PUNC_LIST),
            "punc_weight": [1.0] * len(_PUNC_LIST),
            "sentence_end_id": 3,
        },
        "encoder": "SANMEncoder",
        "encoder_conf": {
            "input_size": 516,
            "output_size": 516,
            "attention_heads": 12,
            "linear_units": 2048,
            "num_blocks": 12,
            "attention_dropout_rate": 0.0,
            "padding_idx": 0,
            **_SAN_M,
        },
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>"},
    }


def build_punc(path: Path) -> int:
    """Write the CT-Transformer (large) directory; returns its parameter count."""
    import torch

    tokens = punc_tokens()
    config = punc_config()
    torch.manual_seed(SEED + 1)
    model = instantiate(config, vocab_size=len(tokens))
    with torch.no_grad():
        # Mostly "_" (no punctuation), sometimes "，" or "。" (argmax decoding: the random part
        # must sometimes outvote the "_" bias). Measured on ASR output of espeak speech.
        model.decoder.bias.copy_(torch.tensor([-20.0, 1.5, 0.3, 0.1, -20.0, -20.0]))
    state = model.state_dict()
    del model
    _write(path, config, state, {"tokenizer_conf": {"token_list": "tokens.json"}}, tokens=tokens)
    return param_count(state)


def build_spk(path: Path) -> int:
    """Write the CAM++ directory (the class's own sizes are those of ``cam++``); returns its parameter count."""
    import torch

    config: dict[str, Any] = {
        "model": "CAMPPlus",
        "model_conf": {"feat_dim": 80, "embedding_size": 192, "growth_rate": 32, "bn_size": 4, "init_channels": 128},
    }
    torch.manual_seed(SEED + 2)
    model = instantiate(config)
    state = model.state_dict()
    _write(path, config, state, {})
    return param_count(state)
