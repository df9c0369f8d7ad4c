"""ONNX Runtime sessions that open in the process that runs them, with that process's thread count.

Why lazily: ``import onnxruntime`` alone starts an OS thread (measured: 1 -> 2 threads at import,
onnxruntime 1.32), so a ``supervisor.preload = "fork"`` zygote that imported it could never fork
safely. The zygote builds the pipeline without touching ONNX Runtime; each forked consumer opens
its own sessions on first use, after it has set its own thread count (``configure_threads``). A
session is bound to the pid that opened it: a forked child never runs its parent's session.

Threads follow the fleet rule (processes x threads <= cores): intra-op = the process's configured
threads, inter-op = 1 (sequential execution), and no spinning (the counterpart of
OMP_WAIT_POLICY=PASSIVE: idle pool threads must not steal the other consumers' cores).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from funasr_fleet.engine.threads import configured_threads


def providers(device: str) -> list[str]:
    """Execution providers for a torch-style device string: CUDA first where ORT has it, CPU always."""
    import onnxruntime as ort

    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(path: Path | str, *, threads: int, device: str = "cpu") -> Any:
    """An ``onnxruntime.InferenceSession`` on ``path`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise
    return ort.InferenceSession(str(path), opts, providers=providers(device))


class LazySession:
    """One ONNX model file; the session opens on the first ``run`` in each process."""

    def __init__(self, path: Path | str, *, device: str = "cpu") -> None:
        self.path = Path(path)
        self.device = device
        self._session: Any = None
        self._pid = -1
        self._lock = threading.Lock()

    @property
    def session(self) -> Any:
        with self._lock:
            if self._session is None or self._pid != os.getpid():
                self._session = open_session(self.path, threads=configured_threads(), device=self.device)
                self._pid = os.getpid()
            return self._session

    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the whole graph; returns every output, in the graph's order."""
        return list(self.session.run(None, feeds))

    def __getstate__(self) -> dict[str, Any]:
        # FunASR deep-copies models (e.g. export); a copy opens its own session
        return {"path": self.path, "device": self.device}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], device=state["device"])  # type: ignore[misc]
