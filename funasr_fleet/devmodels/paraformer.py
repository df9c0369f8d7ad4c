"""The parts of a Paraformer config that the tiny and the full-size ASR share with FunASR's releases.

Both dev ASR models are Paraformers (tiny: BiCifParaformer; full: SeACo-Paraformer-large) and
take their loss weights, CIF predictor, frontend, tokenizer and CTC settings verbatim from the
released ``paraformer-zh`` config; only the sizes (encoder/decoder, the predictor's input width)
differ. Each function returns a fresh dict (callers extend them).
"""

from __future__ import annotations

from typing import Any


def model_conf() -> dict[str, Any]:
    """Paraformer's loss settings (``model_conf``); the SeACo model adds its own keys after these."""
    return {
        "ctc_weight": 0.0,
        "lsm_weight": 0.1,
        "length_normalized_loss": True,
        "predictor_weight": 1.0,
        "predictor_bias": 1,
        "sampling_ratio": 0.75,
    }


def head_and_frontend(idim: int) -> dict[str, Any]:
    """The config's last keys: CifPredictorV3 (with the upsampled timestamp head) over ``idim``-wide
    encoder output, the 16 kHz WavFrontend (80 mel bins, 7 frames stacked every 6), the
    character tokenizer and CTC."""
    return {
        "predictor": "CifPredictorV3",
        "predictor_conf": {
            "idim": idim,
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
