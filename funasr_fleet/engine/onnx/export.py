"""The export cache: FunASR's own ONNX exporter, run once per model directory, weights and variant.

``exported(model_dir, variant)`` returns a directory AutoModel loads like any FunASR model dir: the
source's config.yaml with ``model`` replaced by a ``FleetOnnx*`` class (engine/onnx/models.py),
its tokens/CMVN/other side files, and the ONNX files FunASR's exporter wrote
(``AutoModel(model=DIR).export(type="onnx", quantize=...)``). The export runs in a subprocess
(``python -m funasr_fleet.engine.onnx.export``): it needs the torch model in memory (GBs at full
size), patches torch's exporter, and must not leave threads in a process that may fork later.

Where: ``<model_dir>-onnx/<digest16>-<variant>/`` next to the model, or under
``engine.onnx_cache_dir`` when set (read-only model mounts). ``digest16`` is the first 16 hex of
the model directory's digest (the same one the engine fingerprint uses), so changed weights export
anew and a second start does not export at all. A stamp file written last marks a complete export;
concurrent starters serialise on a lock file and the second finds the first's result.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from funasr_fleet.errors import ModelLoadError

Variant = Literal["fp32", "int8"]
STAMP = "fleet-onnx.json"
FORMAT = 1  # bump when the layout of an export directory changes
ONNX_CLASSES = {
    "BiCifParaformer": "FleetOnnxParaformer",
    "SeacoParaformer": "FleetOnnxParaformer",
    "CTTransformer": "FleetOnnxCTTransformer",
    "FsmnVADStreaming": "FleetOnnxFsmnVad",
    "FsmnVAD": "FleetOnnxFsmnVad",
}
_WEIGHTS = (".pt", ".pb", ".pth", ".onnx", ".bin", ".lock")
_NOT_QUANTISED = ("FsmnVADStreaming", "FsmnVAD")  # 0.4 M parameters: nothing to gain, boundaries to lose


def quantises(source: str, variant: Variant) -> bool:
    """Whether ``variant`` quantises a model of class ``source`` (the VAD always stays fp32)."""
    return variant == "int8" and source not in _NOT_QUANTISED


def cache_dir(model_dir: Path, digest: str, variant: Variant, *, root: Path | None = None) -> Path:
    """Where the export of ``model_dir`` (content ``digest``) in ``variant`` lives."""
    # no ".onnx" in any directory name: FunASR's quantiser derives its output path with
    # str.replace(".onnx", "_quant.onnx") on the whole path
    key = f"{digest[:16]}-{variant}"
    if root is not None:
        return Path(root).expanduser().resolve() / f"{model_dir.name}-{key}"
    return model_dir.parent / f"{model_dir.name}-onnx" / key


def exported(model_dir: Path, variant: Variant, *, digest: str, threads: int = 1, root: Path | None = None,
             timeout_s: float = 3600) -> Path:  # fmt: skip
    """The export directory for ``model_dir`` in ``variant``, exporting first if there is none.

    Raises ``ModelLoadError`` when the model class has no ONNX path here, the cache is not
    writable, or FunASR's exporter fails (its stderr tail in the message).
    """
    source = _source_class(model_dir)
    if source not in ONNX_CLASSES:
        raise ModelLoadError(f"{model_dir}: model class {source} has no ONNX backend here "
                             f"(supported: {', '.join(sorted(ONNX_CLASSES))}); use engine.backend = torch")  # fmt: skip
    if not quantises(source, variant):
        variant = "fp32"  # the same network either way: share one export
    target = cache_dir(model_dir, digest, variant, root=root)
    if ".onnx" in str(target):
        raise ModelLoadError(f"ONNX export directory {target}: its path must not contain '.onnx' (FunASR's "
                             "quantiser rewrites every '.onnx' in it); set FLEET_ENGINE__ONNX_CACHE_DIR")  # fmt: skip
    if _complete(target, digest):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(f"cannot write the ONNX export next to {model_dir} ({exc}); "
                             "set FLEET_ENGINE__ONNX_CACHE_DIR to a writable directory") from exc  # fmt: skip
    with _lock(target):
        if _complete(target, digest):  # another process exported while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            start = time.perf_counter()
            _run_exporter(model_dir, tmp, quantize=quantises(source, variant),
                          threads=threads, timeout_s=timeout_s)  # fmt: skip
            files = _layout(model_dir, tmp, source, variant)
            stamp = {"format": FORMAT, "digest": digest, "variant": variant, "source": source, "files": files,
                     "export_s": round(time.perf_counter() - start, 1), **_versions()}  # fmt: skip
            (tmp / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def stamp_of(export_dir: Path) -> dict[str, Any]:
    try:
        value = json.loads((export_dir / STAMP).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _complete(target: Path, digest: str) -> bool:
    stamp = stamp_of(target)
    return (
        stamp.get("format") == FORMAT
        and stamp.get("digest") == digest
        and all((target / f).is_file() for f in stamp.get("files", {}).values())
    )


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("funasr", "torch", "onnxruntime", "onnx"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = ""
    return out


def _source_class(model_dir: Path) -> str:
    import yaml

    try:
        config = yaml.safe_load((model_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"{model_dir}: cannot read config.yaml: {exc}") from exc
    return str((config or {}).get("model", ""))


@contextlib.contextmanager
def _lock(target: Path) -> Iterator[None]:
    with (target.parent / f".{target.name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_exporter(model_dir: Path, out: Path, *, quantize: bool, threads: int, timeout_s: float) -> None:
    cmd = [sys.executable, "-m", "funasr_fleet.engine.onnx.export", str(model_dir), str(out), f"--threads={threads}"]
    if quantize:
        cmd.append("--quantize")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ModelLoadError(f"ONNX export of {model_dir} took longer than {timeout_s:.0f} s") from exc
    if proc.returncode != 0:
        raise ModelLoadError(f"ONNX export of {model_dir} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")


def _layout(model_dir: Path, out: Path, source: str, variant: Variant) -> dict[str, str]:
    """Turn the exporter's output into a loadable FunASR model dir; returns the meta -> file map."""
    import yaml

    suffix = "_quant.onnx" if quantises(source, variant) else ".onnx"
    files = {"onnx_model": f"model{suffix}"}
    if (out / f"model_eb{suffix}").is_file():
        files["onnx_eb_model"] = f"model_eb{suffix}"
    for rel in files.values():
        if not (out / rel).is_file():
            raise ModelLoadError(f"ONNX export of {model_dir} wrote no {rel}")
    for extra in out.glob("*.onnx"):  # the fp32 files an int8 export passes through
        if extra.name not in files.values():
            extra.unlink()
    for item in model_dir.iterdir():  # side files: tokens, CMVN, jieba dict, BPE model...
        if item.is_file() and item.suffix not in _WEIGHTS and item.name not in ("config.yaml", "configuration.json"):
            shutil.copy2(item, out / item.name)
    config = yaml.safe_load((model_dir / "config.yaml").read_text()) or {}
    config["model"] = ONNX_CLASSES[source]
    config.setdefault("model_conf", {})
    config["model_conf"]["fleet_onnx_source"] = source
    (out / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    metas: dict[str, Any] = {}
    try:
        metas = dict(json.loads((model_dir / "configuration.json").read_text()).get("file_path_metas") or {})
    except (OSError, ValueError):
        for key, name in (("tokenizer_conf", "tokens.json"), ("frontend_conf", "am.mvn")):
            if (model_dir / name).is_file():
                metas[key] = {"token_list" if name == "tokens.json" else "cmvn_file": name}
        if (model_dir / "jieba_usr_dict").is_file():
            metas["jieba_usr_dict"] = "jieba_usr_dict"
    metas.pop("init_param", None)
    metas.update({"config": "config.yaml", **files})
    doc = {
        "framework": "onnx",
        "model": {"type": "funasr"},
        "file_path_metas": metas,
        "fleet": {"source": str(model_dir)},
    }
    (out / "configuration.json").write_text(json.dumps(doc, indent=2))
    return files


# --- the subprocess ----------------------------------------------------------------------------
def _export_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m funasr_fleet.engine.onnx.export")
    parser.add_argument("model_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--quantize", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    from funasr_fleet.engine.threads import configure_threads

    configure_threads(args.threads)
    import functools

    import torch

    # FunASR's exporter was written for the TorchScript-based exporter; torch >= 2.9 defaults to
    # the dynamo one (needs onnxscript, and fails on these models). Same call, legacy exporter.
    torch.onnx.export = functools.partial(torch.onnx.export, dynamo=False)
    from funasr_fleet.engine.pipeline import import_funasr

    auto_model = import_funasr()
    with contextlib.redirect_stdout(sys.stderr):
        model = auto_model(model=args.model_dir, device="cpu", ncpu=args.threads, disable_update=True,
                          disable_pbar=True, disable_log=True, log_level="ERROR")  # fmt: skip
        model.export(type="onnx", quantize=args.quantize, output_dir=args.out_dir, device="cpu")
    return 0


if __name__ == "__main__":
    raise SystemExit(_export_main())
