"""Finding, importing and fingerprinting FunASR models (pure helpers of the ``Engine``).

``import_funasr`` keeps FunASR's import-time prints off stdout; ``resolve_model_ref`` tells a hub
name from a local directory and refuses a directory that is not a model; ``directory_digest`` /
``model_digest`` fingerprint a model by content, not location (big files are sampled: size plus
first and last MiB, so GB weights stay cheap to hash).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
from pathlib import Path
from typing import Any

from funasr_fleet.errors import ModelLoadError

__all__ = [
    "directory_digest", "file_digest", "import_funasr", "model_digest", "model_has_punc", "model_path",
    "resolve_model_ref",
]  # fmt: skip

_MIB = 1024 * 1024
_SMALL_FILE = 4 * _MIB  # hashed whole; larger files: size + first and last MiB (GB weights stay cheap)
STAGES = (("model", "asr"), ("vad_model", "vad"), ("punc_model", "punc"), ("spk_model", "spk"))
"""(EngineSettings field, stage name) of the four models."""


class _QuietFunasr(logging.Filter):
    """FunASR logs through the root logger; drop its per-call chatter unless debugging."""

    _NOISE = ("trust_remote_code", "download models from", "decoding, utt", "Loading ", "ckpt:", "scope_map",
              "excludes:", "Building ", "rtf_avg")  # fmt: skip

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            return True
        msg = str(record.msg)
        return not any(msg.startswith(n) for n in self._NOISE)


def import_funasr() -> Any:
    """Import FunASR with its import-time ``print`` sent to stderr (stdout belongs to commands)."""
    root = logging.getLogger()
    if not any(isinstance(f, _QuietFunasr) for f in root.filters):
        root.addFilter(_QuietFunasr())
    with contextlib.redirect_stdout(sys.stderr):
        from funasr import AutoModel
    return AutoModel


def resolve_model_ref(value: str, key: str, *, required: bool) -> str | None:
    """A hub name stays a name; a path (absolute, ./, ~, or an existing dir) must be a model dir."""
    env = f"FLEET_ENGINE__{key.upper()}"
    value = (value or "").strip()
    if not value:
        if required:
            raise ModelLoadError(f"{env} is empty: a model name or directory is required")
        return None
    if value.startswith(("/", ".", "~")) or Path(value).is_dir():
        path = Path(value).expanduser().resolve()
        if not path.is_dir():
            raise ModelLoadError(f"{env}={value}: no such directory")
        if not (path / "config.yaml").is_file():
            raise ModelLoadError(f"{env}={value}: not a FunASR model directory (no config.yaml)")
        return str(path)
    return value


def model_has_punc(model: Any) -> bool:
    return getattr(model, "punc_model", None) is not None


def model_path(kwargs: dict[str, Any] | None) -> Path | None:
    if not kwargs:
        return None
    value = kwargs.get("model_path")
    if isinstance(value, str) and Path(value).is_dir():
        return Path(value)
    return None


def directory_digest(path: Path) -> str:
    """Stable digest of a model directory: relative names, sizes and (sampled) contents."""
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if "__pycache__" in file.parts or file.suffix in (".lock", ".pyc"):
            continue
        rel = file.relative_to(path).as_posix()
        h.update(rel.encode() + b"\0")
        h.update(file_digest(file).encode() + b"\0")
    return h.hexdigest()


def model_digest(path: Path) -> str:
    """``directory_digest``, except that an ONNX export counts as the model it was exported from
    (its stamp records that digest; the export's own files carry build metadata)."""
    from funasr_fleet.engine.onnx.export import stamp_of

    source = stamp_of(path).get("digest")
    return str(source) if source else directory_digest(path)


def file_digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode() + b"\0")
    with path.open("rb") as f:
        if size <= _SMALL_FILE:
            h.update(f.read())
        else:
            h.update(f.read(_MIB))
            f.seek(size - _MIB)
            h.update(f.read(_MIB))
    return h.hexdigest()
