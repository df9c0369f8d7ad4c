"""The ONNX Runtime backend (``engine.backend = "onnx"``): VAD, ASR and punctuation in ONNX Runtime.

How it plugs in: ``prepare`` turns each model reference (directory or hub name) into an export
directory (``export.py``: FunASR's own exporter, cached next to the model by content digest) whose
config.yaml names a ``FleetOnnx*`` class (``models.py``); the Engine then builds FunASR's AutoModel
from those directories exactly as for torch. Speaker embeddings and clustering (CAM++) stay torch.
Sessions open lazily in the process that runs them (``session.py``), which keeps
``supervisor.preload = "fork"`` safe.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from funasr_fleet.engine.onnx.export import Variant, exported, stamp_of
from funasr_fleet.errors import ModelLoadError

ONNX_STAGES = ("model", "vad_model", "punc_model")  # EngineSettings keys whose model runs in ONNX Runtime

__all__ = ["ONNX_STAGES", "Variant", "prepare", "register", "stamp_of", "variant_of"]


def variant_of(quantize: str) -> Variant:
    """``engine.quantize`` ("none" | "int8") as an export variant."""
    return "int8" if quantize == "int8" else "fp32"


def register() -> None:
    """Make the FleetOnnx* classes known to FunASR (imports FunASR; not onnxruntime)."""
    from funasr_fleet.engine.onnx.models import register as _register

    _register()


def local_dir(ref: str, *, hub: str) -> Path:
    """A model reference as a local directory: directories as they are, hub names downloaded
    (or found in the hub cache) the way AutoModel does it. Raises ``ModelLoadError``."""
    path = Path(ref)
    if path.is_dir():
        return path
    try:
        from funasr.download.download_model_from_hub import download_model

        kwargs = download_model(model=ref, hub=hub, disable_update=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot resolve model {ref!r} to a local directory for the ONNX export: {exc}") from exc
    found = Path(str(kwargs.get("model_path") or ""))
    if not (found / "config.yaml").is_file():
        raise ModelLoadError(f"model {ref!r} resolved to {found}, which is not a FunASR model directory")
    return found


def prepare(refs: dict[str, str | None], *, quantize: str, hub: str, threads: int,
            cache_root: str | None, digest_of: Callable[[Path], str]) -> dict[str, str | None]:  # fmt: skip
    """``refs`` (EngineSettings key -> model ref) with the ONNX stages replaced by export dirs.

    ``digest_of`` is the engine's directory digest (the export cache key). Raises ``ModelLoadError``.
    """
    out = dict(refs)
    variant = variant_of(quantize)
    root = Path(cache_root) if cache_root else None
    for key in ONNX_STAGES:
        ref = refs.get(key)
        if not ref:
            continue
        source = local_dir(ref, hub=hub)
        out[key] = str(exported(source, variant, digest=digest_of(source), threads=threads, root=root))
    return out
