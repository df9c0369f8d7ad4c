"""``[engine]``: which models a consumer loads, on what device and backend, and the audio limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from funasr_fleet.settings.section import Section


class EngineSettings(Section):
    model: str = Field(
        "paraformer-zh",
        description="ASR model: a FunASR/ModelScope model name, or an absolute local directory.",
    )
    vad_model: str = Field("fsmn-vad", description="VAD model name or absolute directory.")
    punc_model: str = Field("ct-punc", description="Punctuation model name or absolute directory; empty disables it.")
    spk_model: str = Field(
        "cam++", description="Speaker-embedding model name or absolute directory; empty disables diarization."
    )
    hub: Literal["ms", "hf"] = Field(
        "ms", description="Model hub used for model names (ms=ModelScope, hf=HuggingFace)."
    )
    model_cache_dir: str | None = Field(
        None,
        description="Where downloaded models are cached (sets MODELSCOPE_CACHE / HF_HOME); default: the hub's own.",
    )
    device: str = Field("cpu", description="Torch device: cpu, cuda, cuda:0 ...")
    backend: Literal["torch", "onnx"] = Field(
        "torch",
        description=(
            "Inference backend: torch (FunASR as is) or onnx (VAD, ASR and punctuation in ONNX Runtime, "
            "exported once by FunASR's exporter and cached; speakers stay torch)."
        ),
    )
    quantize: Literal["none", "int8"] = Field(
        "none",
        description="onnx backend only: int8 = dynamically quantised ASR and punctuation weights (the VAD stays fp32).",
    )
    onnx_cache_dir: str | None = Field(
        None,
        description="Where ONNX exports are cached; default: <model dir>-onnx/ next to each model (must be writable).",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description=(
            "Torch/OpenMP threads for this process. Unset: usable cores (one process), "
            "or set by the supervisor to cores // consumers."
        ),
    )
    batch_size_s: int = Field(300, ge=1, description="FunASR dynamic batch size, in seconds of audio.")
    max_end_silence_ms: int = Field(
        800,
        ge=0,
        description="VAD: silence (ms) that ends a segment. FunASR's dynamic default ignores pauses under ~2 s.",
    )
    turn_gap_s: float = Field(
        3.0, ge=0, description="Consecutive sentences of one speaker closer than this merge into one turn."
    )
    min_audio_s: float = Field(0.5, ge=0, description="Shorter audio fails with audio_too_short.")
    max_audio_s: float = Field(4 * 3600, gt=0, description="Longer audio fails with audio_too_long.")
    window_s: float = Field(
        300.0,
        ge=10,
        description=(
            "Audio longer than this is transcribed in windows of about this length, cut in VAD silences "
            "(bounded memory); speakers are clustered once over the whole file."
        ),
    )
    max_memory_mb: int | None = Field(
        None,
        ge=1,
        description=(
            "Refuse (audio_too_long) a job whose estimated peak RSS (Engine.check_memory) exceeds this; "
            "unset: no limit."
        ),
    )

    @model_validator(mode="after")
    def _quantize_needs_onnx(self) -> EngineSettings:
        if self.quantize != "none" and self.backend != "onnx":
            raise ValueError(f"quantize = {self.quantize} needs backend = onnx (the torch backend runs fp32 only)")
        return self
