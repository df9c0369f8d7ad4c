"""The walls between packages, checked in a fresh interpreter (what a module imports at load time).

- the engine knows no broker and no storage: no pika, no boto3 under funasr_fleet/engine/;
- the supervisor never imports the engine (no torch), so it stays small and fork-safe.
"""

from __future__ import annotations

import os
import subprocess
import sys

ENGINE_MODULES = ("audio", "pipeline", "threads", "transcript")


def _loaded_after(imports: str, banned: str) -> subprocess.CompletedProcess[str]:
    """Run ``imports`` in a fresh interpreter; it fails (printing them) if modules matching ``banned`` got loaded.

    ``banned``: a Python expression over ``m`` (a module name in sys.modules).
    """
    code = f"import sys\n{imports}\nbad = sorted(m for m in sys.modules if {banned})\nprint(bad)\nsys.exit(1 if bad else 0)\n"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ.copy()
    )


def test_engine_never_imports_the_broker_or_storage() -> None:
    imports = "".join(f"import funasr_fleet.engine.{name}\n" for name in ENGINE_MODULES) + "import funasr_fleet.outputs"
    banned = (
        "m.split('.')[0] in ('pika', 'boto3', 'botocore')"
        " or m in ('funasr_fleet.storage', 'funasr_fleet.topology', 'funasr_fleet.envelope')"
    )
    done = _loaded_after(imports, banned)
    assert done.returncode == 0, done.stdout + done.stderr


def test_supervisor_never_imports_the_engine() -> None:
    imports = (
        "import funasr_fleet.supervisor.arbiter, funasr_fleet.supervisor.http, funasr_fleet.supervisor.policy\n"
        "import funasr_fleet.commands.supervise, funasr_fleet.metrics, funasr_fleet.cli\n"
        "funasr_fleet.cli.build_parser()"
    )
    done = _loaded_after(imports, "m in ('torch', 'funasr', 'funasr_fleet.engine.pipeline')")
    assert done.returncode == 0, done.stdout + done.stderr
