#!/usr/bin/env bash
# Idempotent set-up: system tools (Debian), the project venv, the project and its test extras.
# Re-runs are cheap: the pip step is skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v ffmpeg >/dev/null || need_apt+=(ffmpeg)
command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)
command -v sox >/dev/null || need_apt+=(sox)
command -v make >/dev/null || need_apt+=(make)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${need_apt[*]} (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install: ${need_apt[*]}" >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.fleet-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the project into .venv (first time: a few minutes)"
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  # torch first, pinned: the CPU build. Anything unpinned would pull a multi-GB CUDA build.
  .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c "import torch, funasr_fleet; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
    || { echo "setup: install failed" >&2; exit 1; }
  echo "$want" >"$stamp"
fi
