"""Loading FunASR's pipeline (``load_pipeline``) and naming what was loaded (``identity_of``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from typing import Any

from funasr_fleet.engine.clustering import CLUSTERING_VERSION
from funasr_fleet.engine.models import STAGES, directory_digest, import_funasr, model_digest, model_path
from funasr_fleet.engine.sentences import SENTENCE_RULES
from funasr_fleet.engine.threads import configure_threads
from funasr_fleet.engine.transcript import ModelIdentity
from funasr_fleet.errors import FleetError, ModelLoadError
from funasr_fleet.settings import EngineSettings

__all__ = ["identity_of", "load_pipeline"]

_STAGES = STAGES


def load_pipeline(settings: EngineSettings, refs: dict[str, str | None], threads: int) -> Any:
    """FunASR's ``AutoModel`` for ``refs`` (``models.resolve_model_ref`` output; the onnx backend swaps
    in cached exports). Raises ``ModelLoadError`` when funasr cannot be imported or a model not loaded."""
    try:
        AutoModel = import_funasr()  # noqa: N806 - the class, named as FunASR names it
    except Exception as exc:  # a broken install (e.g. an incompatible torchaudio) fails here
        raise ModelLoadError(f"cannot import funasr: {exc}") from exc
    s = settings
    given, refs = refs, _onnx_refs(settings, refs, threads) if s.backend == "onnx" else refs
    kwargs: dict[str, Any] = {
        "model": refs["model"],
        "vad_model": refs["vad_model"],
        "vad_kwargs": {"max_end_silence_time": s.max_end_silence_ms},
        "hub": s.hub,
        "device": s.device,
        "ncpu": threads,
        "disable_update": True,
        "disable_pbar": True,
        "disable_log": True,
        "log_level": "ERROR",
    }
    if refs["punc_model"]:
        kwargs["punc_model"] = refs["punc_model"]
    if refs["spk_model"]:
        kwargs["spk_model"] = refs["spk_model"]
    try:
        # FunASR prints (its version, download failures) to stdout; stdout belongs to commands
        with contextlib.redirect_stdout(sys.stderr):
            model = AutoModel(**kwargs)
    except FleetError:
        raise
    except Exception as exc:
        names = ", ".join(f"{k}={v}" for k, v in given.items() if v)
        raise ModelLoadError(f"loading the FunASR pipeline failed ({names}): {exc}") from exc
    # FunASR resets the torch thread count from ncpu; keep ours in force.
    configure_threads(threads)
    return model


def _onnx_refs(settings: EngineSettings, refs: dict[str, str | None], threads: int) -> dict[str, str | None]:
    """Model refs with VAD, ASR and punctuation replaced by their (cached) ONNX exports."""
    from funasr_fleet.engine import onnx

    onnx.register()
    s = settings
    return onnx.prepare(refs, quantize=s.quantize, hub=s.hub, threads=threads,
                        cache_root=s.onnx_cache_dir, digest_of=directory_digest)  # fmt: skip


def identity_of(model: Any, refs: dict[str, str | None], settings: EngineSettings) -> ModelIdentity:
    """What a result depends on: model names, content digests, FunASR version, device and the
    settings that change words or their grouping; ``fingerprint`` hashes it all."""
    import funasr
    import torch

    paths = {
        "asr": model_path(model.kwargs),
        "vad": model_path(getattr(model, "vad_kwargs", None)),
        "punc": model_path(getattr(model, "punc_kwargs", None)) if refs["punc_model"] else None,
        "spk": model_path(getattr(model, "spk_kwargs", None)) if refs["spk_model"] else None,
    }
    # the device FunASR resolved (it falls back to cpu when cuda is absent); type only, so the
    # fingerprint does not change with the GPU index a pod happens to get
    device = torch.device(str(model.kwargs.get("device") or "cpu")).type
    names = {stage: refs[key] or "" for key, stage in _STAGES}
    # Content, not location: a model directory that moves (another mount, another pod) keeps
    # its fingerprint; a hub name counts only when its files cannot be found.
    digest_input = {
        "names": {stage: None if paths[stage] else names[stage] for stage in names},
        "files": {stage: model_digest(p) if p else None for stage, p in paths.items()},
        "funasr": funasr.__version__,
        "device": device,
        # settings that change the words or their grouping are part of what a result depends on
        "max_end_silence_ms": settings.max_end_silence_ms,
        "turn_gap_s": settings.turn_gap_s,
        "sentence_rules": SENTENCE_RULES,
        "speaker_clustering": CLUSTERING_VERSION,
        "window_s": settings.window_s,  # where long audio is cut changes its sentences
    }
    if settings.backend != "torch":
        digest_input["backend"] = [settings.backend, settings.quantize]
    fingerprint = hashlib.sha256(json.dumps(digest_input, sort_keys=True).encode()).hexdigest()
    return ModelIdentity(
        asr=names["asr"], vad=names["vad"], punc=names["punc"], spk=names["spk"],
        funasr_version=funasr.__version__, device=device, fingerprint=fingerprint,
    )  # fmt: skip
