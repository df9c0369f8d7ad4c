"""FunASR model classes whose network runs in ONNX Runtime (registered in FunASR's model table).

Each class implements FunASR's model interface, ``inference(data_in, data_lengths=None, key=None,
tokenizer=None, frontend=None, **kwargs) -> (results, meta)``, so it plugs into AutoModel's own
code path (``generate``, ``inference_with_vad``, per-component ``AutoModel.inference``). Only the
neural network moves to ONNX Runtime; features (FunASR's WavFrontend), tokenizers, decoding,
timestamps, punctuation post-processing and the VAD state machine stay FunASR's own code, so the
results have the torch backend's shape by construction:

- ``FleetOnnxParaformer``: Paraformer with timestamps (BiCifParaformer, SeacoParaformer) from
  FunASR's export (``logits, token_num, us_alphas, us_cif_peak``); SeACo hotwords go through the
  exported hotword embedder (``model_eb.onnx``). -> ``{"key", "text", "timestamp"}``.
- ``FleetOnnxCTTransformer``: CT-Transformer punctuation; FunASR's ``CTTransformer.inference``
  with ``punc_forward`` in ONNX Runtime. -> ``{"key", "text", "punc_array"}``.
- ``FleetOnnxFsmnVad``: fsmn-vad; FunASR's ``FsmnVADStreaming`` with its FSMN encoder (and caches)
  in ONNX Runtime. -> ``{"key", "value": [[start_ms, end_ms], ...]}``.

The export directory (``engine/onnx/export.py``) names these classes in its config.yaml and points
``onnx_model`` (and ``onnx_eb_model``) at the exported files.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from funasr_fleet.engine.onnx.session import LazySession

SOURCE_KEY = "fleet_onnx_source"  # model_conf key: the FunASR class the export came from

_registered = False


class _OnnxModule(torch.nn.Module):
    """A module whose weights live in ONNX Runtime. AutoModel asks ``next(model.parameters())``
    for the device, so it carries one frozen zero-size parameter to answer that."""

    def __init__(self) -> None:
        super().__init__()
        self.device_anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)


def register() -> None:
    """Add the classes to FunASR's model table (idempotent); call after FunASR is imported."""
    global _registered
    if _registered:
        return
    from funasr.models.ct_transformer.model import CTTransformer
    from funasr.models.fsmn_vad_streaming.model import FsmnVADStreaming
    from funasr.register import tables

    class FleetOnnxCTTransformer(_OnnxModule):
        """CT-Transformer punctuation; the network in ONNX Runtime, everything else FunASR's."""

        inference = CTTransformer.inference

        def __init__(self, onnx_model: str, punc_list: list[str], sentence_end_id: int = 3,
                     device: str = "cpu", **kwargs: Any) -> None:  # fmt: skip
            super().__init__()
            self.session = LazySession(onnx_model, device=str(device))
            self.punc_list = list(punc_list)
            self.sentence_end_id = sentence_end_id
            self.jieba_usr_dict = None
            if kwargs.get("jieba_usr_dict"):
                import jieba

                jieba.load_userdict(kwargs["jieba_usr_dict"])
                self.jieba_usr_dict = jieba

        def punc_forward(
            self, text: torch.Tensor, text_lengths: torch.Tensor, **kwargs: Any
        ) -> tuple[torch.Tensor, None]:
            (logits,) = self.session.run({
                "inputs": text.cpu().numpy().astype(np.int32),
                "text_lengths": text_lengths.cpu().numpy().astype(np.int32),
            })  # fmt: skip
            return torch.from_numpy(logits), None

    class FleetOnnxFsmnVad(FsmnVADStreaming):
        """fsmn-vad: FunASR's streaming VAD logic; its FSMN encoder in ONNX Runtime."""

        def __init__(self, *args: Any, onnx_model: str, device: str = "cpu", **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.encoder = _OrtFsmnEncoder(LazySession(onnx_model, device=str(device)))

    tables.model_classes["FleetOnnxParaformer"] = FleetOnnxParaformer
    tables.model_classes["FleetOnnxCTTransformer"] = FleetOnnxCTTransformer
    tables.model_classes["FleetOnnxFsmnVad"] = FleetOnnxFsmnVad
    _registered = True


class _OrtFsmnEncoder(_OnnxModule):
    """Stands in for FSMN's torch encoder: ``scores = encoder(feats, cache=dict)``, caches carried in the dict."""

    def __init__(self, session: LazySession) -> None:
        super().__init__()
        self.session = session

    def forward(self, feats: torch.Tensor, cache: dict[str, Any]) -> torch.Tensor:
        inputs = self.session.session.get_inputs()
        feeds: dict[str, np.ndarray] = {inputs[0].name: feats.cpu().numpy().astype(np.float32)}
        for i, spec in enumerate(inputs[1:]):
            state = cache.get(f"onnx_cache_{i}")
            if state is None:
                state = np.zeros([1 if not isinstance(d, int) else d for d in spec.shape], dtype=np.float32)
            feeds[spec.name] = state
        scores, *states = self.session.run(feeds)
        for i, state in enumerate(states):
            cache[f"onnx_cache_{i}"] = state
        return torch.from_numpy(scores)


class FleetOnnxParaformer(_OnnxModule):
    """Paraformer with timestamps (BiCif / SeACo) from FunASR's ONNX export."""

    def __init__(self, onnx_model: str, onnx_eb_model: str | None = None, token_list: list[str] | None = None,
                 device: str = "cpu", **kwargs: Any) -> None:  # fmt: skip
        super().__init__()
        self.session = LazySession(onnx_model, device=str(device))
        self.eb_session = LazySession(onnx_eb_model, device=str(device)) if onnx_eb_model else None
        self.source = str(kwargs.get(SOURCE_KEY) or "BiCifParaformer")
        self.vocab = {tok: i for i, tok in enumerate(token_list or [])}
        self.sos = int(kwargs.get("sos", 1))
        self.eos = int(kwargs.get("eos", 2))
        self.blank_id = int(kwargs.get("blank_id", 0))
        self.unk_id = self.vocab.get("<unk>", len(self.vocab) - 1)

    def inference(self, data_in: Any, data_lengths: Any = None, key: list[str] | None = None,
                  tokenizer: Any = None, frontend: Any = None, **kwargs: Any) -> Any:  # fmt: skip
        """FunASR's interface; mirrors ``BiCifParaformer.inference`` / ``SeacoParaformer.inference``."""
        from funasr.utils import postprocess_utils
        from funasr.utils.load_utils import extract_fbank, load_audio_text_image_video
        from funasr.utils.timestamp_tools import ts_prediction_lfr6_standard

        meta: dict[str, Any] = {}
        samples = load_audio_text_image_video(data_in, fs=frontend.fs, audio_fs=kwargs.get("fs", 16000))
        speech, speech_lengths = extract_fbank(samples, data_type=kwargs.get("data_type", "sound"), frontend=frontend)
        meta["batch_data_time"] = speech_lengths.sum().item() * frontend.frame_shift * frontend.lfr_n / 1000
        feeds = {"speech": speech.numpy().astype(np.float32), "speech_lengths": speech_lengths.numpy().astype(np.int32)}
        if self.eb_session is not None:
            feeds["bias_embed"] = self._bias_embed(kwargs.get("hotword"), batch=speech.shape[0])
        logits, token_num, us_alphas, us_peaks = self.session.run(feeds)
        token_num = np.asarray(token_num).reshape(-1).astype(np.int64)
        if token_num.max(initial=0) < 1:
            return ([],) if self.source == "SeacoParaformer" else []
        us_alphas_t, us_peaks_t = torch.from_numpy(us_alphas), torch.from_numpy(us_peaks)
        keys = key or [str(i) for i in range(len(token_num))]
        results = []
        for i in range(len(token_num)):
            yseq = logits[i, : token_num[i], :].argmax(axis=-1).tolist()
            token_int = [t for t in yseq if t not in (self.eos, self.sos, self.blank_id)]
            if tokenizer is None:
                results.append({"key": keys[i], "token_int": token_int})
                continue
            token = tokenizer.ids2tokens(token_int)
            frames = int(speech_lengths[i]) * 3
            _, timestamp = ts_prediction_lfr6_standard(
                us_alphas_t[i][:frames],
                us_peaks_t[i][:frames],
                copy.copy(token),
                vad_offset=kwargs.get("begin_time", 0),
            )
            text, stamps, *_ = postprocess_utils.sentence_postprocess(token, timestamp)
            results.append({"key": keys[i], "text": text, "timestamp": stamps})
        return results, meta

    def _bias_embed(self, hotword: Any, *, batch: int) -> np.ndarray:
        """SeACo's hotword embedding: one row per hotword plus the "no hotword" row (``<s>``), as
        FunASR's runtime builds it. ``hotword``: a whitespace-separated string (or None)."""
        assert self.eb_session is not None
        words = [w for w in str(hotword or "").split() if w] if isinstance(hotword, str) else []
        ids = [[self.vocab.get(c, self.unk_id) for c in w][:10] for w in words] + [[self.sos]]
        lengths = np.array([len(w) - 1 for w in ids], dtype=np.int64)
        padded = np.zeros((len(ids), 10), dtype=np.int32)
        for row, w in enumerate(ids):
            padded[row, : len(w)] = w
        (hw_embed,) = self.eb_session.run({self.eb_session.input_names()[0]: padded})
        per_word = hw_embed.transpose(1, 0, 2)[np.arange(len(ids)), lengths]  # (words, dim): each word's last step
        return np.repeat(per_word[None, :, :], batch, axis=0).astype(np.float32)
