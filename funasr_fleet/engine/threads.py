"""Thread limits for one inference process, set BEFORE torch is imported.

Why: OpenMP/MKL read their thread counts once, at library load. Several consumer processes each
using every core oversubscribe the CPU (measured here: 3x to 60x slower), and OpenMP's default
spin-waiting makes it far worse. So each process gets ``threads`` (the supervisor passes
cores // consumers through FLEET_ENGINE__THREADS) and passive waiting.

Call ``configure_threads`` first thing in any process that will load the engine.
"""

from __future__ import annotations

import contextlib
import os
import sys

from funasr_fleet.logs import get_logger
from funasr_fleet.settings import usable_cores

_ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_configured: int | None = None  # what configure_threads last set in this process


def resolve_threads(n: int | None) -> int:
    """The thread count to use: ``n`` when given, else the cores this process may use."""
    return max(1, int(n)) if n else usable_cores()


def configure_threads(n: int | None = None) -> int:
    """Pin OpenMP/MKL/OpenBLAS and torch to ``n`` threads (default: usable cores); returns n.

    Sets the environment (effective only if torch is not imported yet, so call it early), then
    torch's intra-op and inter-op counts. Safe to call again with the same value.
    """
    global _configured
    threads = resolve_threads(n)
    _configured = threads
    if "torch" in sys.modules and os.environ.get("OMP_NUM_THREADS") != str(threads):
        # OpenMP has read its settings already; only torch.set_num_threads below still applies
        get_logger(__name__).warning(
            "threads.configured_after_torch_import", threads=threads, omp_num_threads=os.environ.get("OMP_NUM_THREADS")
        )
    for key in _ENV_KEYS:
        os.environ[key] = str(threads)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # no spin-waiting: idle threads must not steal cores
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("NUMBA_NUM_THREADS", str(threads))
    import torch  # after the environment, on purpose

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    # already set, or parallel work has started: only allowed once per process
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1 if threads == 1 else min(threads, 2))
    return threads


def configured_threads() -> int:
    """The count ``configure_threads`` last set in THIS process (a forked child sets its own), else
    the usable cores. ONNX Runtime sessions take their intra-op thread count from here."""
    return _configured if _configured is not None else resolve_threads(None)
