"""The walls between packages, checked in a fresh interpreter (what a module imports at load time).

- the engine knows no broker and no storage: no pika, no boto3 under funasr_fleet/engine/;
- the supervisor never imports the engine (no torch): tests/test_supervisor_policy.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

ENGINE_MODULES = ("audio", "pipeline", "threads", "transcript")


def test_engine_never_imports_the_broker_or_storage() -> None:
    code = (
        "import sys\n"
        + "".join(f"import funasr_fleet.engine.{name}\n" for name in ENGINE_MODULES)
        + "import funasr_fleet.outputs\n"
        "banned = sorted(m for m in sys.modules if m.split('.')[0] in ('pika', 'boto3', 'botocore')"
        " or m in ('funasr_fleet.storage', 'funasr_fleet.topology', 'funasr_fleet.envelope'))\n"
        "print(banned)\n"
        "sys.exit(1 if banned else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ.copy()
    )
    assert done.returncode == 0, done.stdout + done.stderr
