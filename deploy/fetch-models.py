#!/usr/bin/env python3
"""Download the engine's models into local directories and write a TOML file pointing at them.

Used by the Dockerfile with ``--build-arg BAKE_MODELS=1`` (and usable on a host to fill a model volume):

    python deploy/fetch-models.py --dest /opt/funasr-models --toml /etc/funasr-fleet/fleet.toml

Which models: the engine settings (``FLEET_ENGINE__MODEL``, ``__VAD_MODEL``, ``__PUNC_MODEL``, ``__SPK_MODEL``,
``__HUB``; defaults paraformer-zh, fsmn-vad, ct-punc, cam++ from ModelScope). FunASR's short names are mapped to
hub ids with FunASR's own table. Each model lands in ``DEST/<name>``; the TOML file then names those absolute
directories, so the engine never contacts a hub at run time (absolute directories are loaded as they are).
Values that already are directories are kept; empty ones (punctuation or diarization off) stay empty.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

KEYS = ("model", "vad_model", "punc_model", "spk_model")


def hub_id(name: str, hub: str) -> str:
    from funasr.download.name_maps_from_hub import name_maps_hf, name_maps_ms

    table = name_maps_ms if hub == "ms" else name_maps_hf
    return table.get(name, name)


def download(model_id: str, target: Path, hub: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if hub == "ms":
        from modelscope.hub.snapshot_download import snapshot_download

        snapshot_download(model_id, local_dir=str(target))
    else:
        from huggingface_hub import snapshot_download as hf_snapshot_download

        hf_snapshot_download(repo_id=model_id, local_dir=str(target))
    if not (target / "config.yaml").is_file():
        raise SystemExit(f"fetch-models: {model_id} downloaded to {target} has no config.yaml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, required=True, help="directory that receives one folder per model")
    parser.add_argument("--toml", type=Path, required=True, help="TOML file to write ([engine] with absolute dirs)")
    args = parser.parse_args(argv)

    from funasr_fleet.settings import EngineSettings, load_settings

    engine: EngineSettings = load_settings().engine
    lines = ["# written by deploy/fetch-models.py: models baked into this image", "[engine]"]
    for key in KEYS:
        value = (getattr(engine, key) or "").strip()
        if not value or value.startswith(("/", ".", "~")):
            lines.append(f"{key} = {json.dumps(value)}")
            continue
        model_id = hub_id(value, engine.hub)
        target = (args.dest / re.sub(r"[^A-Za-z0-9._+-]", "_", value)).resolve()
        print(f"fetch-models: {key}={value} -> {model_id} -> {target}", file=sys.stderr)
        download(model_id, target, engine.hub)
        lines.append(f"{key} = {json.dumps(str(target))}")
    args.toml.parent.mkdir(parents=True, exist_ok=True)
    args.toml.write_text("\n".join(lines) + "\n")
    print(args.toml.read_text(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
