"""Device check (GPU machine): the supervisor's fresh-interpreter consumers each use CUDA.

    python3 benchmarks/fleet_gpu_check.py        # OUT=<dir> for the report and the supervisor log

Starts `supervise --consumers 2 --threads 4` with a stand-in consumer that initialises CUDA and
runs matmuls (no broker, no model: the point is the process model), SIGKILLs one consumer, rolls
both with SIGHUP, drains with SIGTERM, and shows the negative control: a fork of a CUDA-initialised
process cannot use CUDA (why consumers are fresh interpreters). Needs torch with CUDA, pydantic,
pydantic-settings, structlog and prometheus-client; PYTHONPATH=<repo>. Not a test: prints a report.
"""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CONSUMER = r'''"""Stand-in consumer that really uses CUDA: heartbeat contract + a GPU matmul 'job'."""
import json, os, signal, sys, time

hb = os.environ["FLEET_CONSUMER__HEARTBEAT_FILE"]
sup = int(os.environ["FLEET_SUPERVISOR_PID"])
stop = False
info = {"pid": os.getpid(), "threads_env": os.environ.get("FLEET_ENGINE__THREADS"),
        "omp": os.environ.get("OMP_NUM_THREADS")}

def write(state, **extra):
    body = {"pid": os.getpid(), "state": state, "job_id": None, "ts": time.time(), **info, **extra}
    tmp = hb + ".tmp"
    with open(tmp, "w") as f:
        json.dump(body, f)
    os.replace(tmp, hb)

def on_term(s, f):
    global stop
    stop = True

signal.signal(signal.SIGTERM, on_term)
write("booting")
t0 = time.time()
import torch
dev = "cuda" if torch.cuda.is_available() else "cpu"
torch.set_num_threads(int(os.environ.get("FLEET_ENGINE__THREADS", "1")))
x = torch.randn(2048, 2048, device=dev)
y = (x @ x).sum().item()
if dev == "cuda":
    torch.cuda.synchronize()
info.update(device=dev, name=torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
            torch_threads=torch.get_num_threads(), boot_s=round(time.time() - t0, 3),
            mem_mb=round(torch.cuda.memory_allocated() / 2**20, 1) if dev == "cuda" else 0)
write("ready")
while not stop:
    if os.getppid() != sup:
        sys.exit(5)
    z = x @ x  # keep the GPU busy a little: a "job"
    if dev == "cuda":
        torch.cuda.synchronize()
    write("busy")
    time.sleep(0.2)
write("draining")
sys.exit(0)
'''

PY = sys.executable
OUT = os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu-check-")
CONSUMER_PATH = os.path.join(tempfile.mkdtemp(prefix="gpu-consumer-"), "gpu_consumer.py")
Path(CONSUMER_PATH).write_text(CONSUMER)
report = {}


def log(msg):
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fork_after_cuda():
    """Negative control: a fork of a CUDA-initialised process cannot use CUDA."""
    code = (
        "import torch, multiprocessing as mp\n"
        "def child(q):\n"
        "    try:\n"
        "        torch.zeros(1, device='cuda'); q.put('ok')\n"
        "    except Exception as e:\n"
        "        q.put(type(e).__name__ + ': ' + str(e)[:160])\n"
        "torch.zeros(1, device='cuda')\n"
        "ctx = mp.get_context('fork'); q = ctx.Queue()\n"
        "p = ctx.Process(target=child, args=(q,)); p.start(); p.join(60)\n"
        "print(q.get(timeout=5))\n"
    )
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120)
    return r.stdout.strip() or r.stderr.strip()[-300:]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    global port, state
    port = free_port()
    state = "/tmp/gpucheck-state"
    env = {
        **os.environ,
        "FLEET_SUPERVISOR__HTTP_HOST": "127.0.0.1",
        "FLEET_SUPERVISOR__HTTP_PORT": str(port),
        "FLEET_SUPERVISOR__STATE_DIR": state,
        "FLEET_LOG__FORMAT": "json",
        "FLEET_SUPERVISOR__RESTART_BACKOFF_BASE_S": "0.2",
        "FLEET_SUPERVISOR__HEARTBEAT_TIMEOUT_S": "10",
    }
    launcher = (
        "import argparse, sys; from funasr_fleet.commands import supervise; p = argparse.ArgumentParser(); "
        "supervise.add_arguments(p); sys.exit(supervise.run(p.parse_args(sys.argv[1:])))"
    )
    cmd = [PY, "-c", launcher, "--consumers", "2", "--threads", "4", "--consumer-command", f"{PY} {CONSUMER_PATH}"]
    logf = open(os.path.join(OUT, "supervisor.log"), "wb")  # noqa: SIM115 - open for the whole run, closed in finally
    t_start = time.monotonic()
    sup = subprocess.Popen(cmd, env=env, stderr=logf, stdout=subprocess.DEVNULL)

    def status():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=3) as r:
                return json.loads(r.read())
        except (OSError, ValueError):  # not up yet, or a half-written answer
            return {}

    def ready_pids():
        return sorted(
            c["pid"] for c in status().get("consumers", []) if c["serving"] and c["state"] in ("ready", "busy")
        )

    def wait(pred, timeout, what):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            v = pred()
            if v:
                return v
            time.sleep(0.1)
        raise SystemExit(f"TIMEOUT waiting for {what}; status={status()}")

    def beats():
        out = {}
        for p in glob.glob(f"{state}/run-*/heartbeats/*.json"):
            try:
                b = json.loads(Path(p).read_text())
                out[b["pid"]] = b
            except (OSError, ValueError, KeyError, TypeError):  # a beat being replaced, or not a beat
                pass
        return out

    def alive(pid):
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    try:
        first = wait(lambda: p if len(p := ready_pids()) == 2 else None, 180, "2 ready consumers")
        report["boot_to_2_ready_s"] = round(time.monotonic() - t_start, 2)
        report["consumers_first"] = [beats().get(p) for p in first]
        log(f"ready: {report['consumers_first']}")
        os.kill(first[0], signal.SIGKILL)
        second = wait(lambda: p if len(p := ready_pids()) == 2 and first[0] not in p else None, 120, "replacement")
        report["after_sigkill"] = [beats().get(p) for p in second]
        sup.send_signal(signal.SIGHUP)
        rolled = wait(lambda: p if len(p := ready_pids()) == 2 and not set(p) & set(second) else None, 180, "rolling")
        wait(lambda: not any(alive(p) for p in second), 60, "old drained")
        report["after_rolling"] = [beats().get(p) for p in rolled]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            report["metrics"] = [
                line
                for line in r.read().decode().splitlines()
                if line.startswith(("fleet_consumer_restarts_total", "fleet_consumers_"))
            ]
        t0 = time.monotonic()
        sup.send_signal(signal.SIGTERM)
        report["supervisor_exit"] = sup.wait(60)
        report["drain_s"] = round(time.monotonic() - t0, 2)
        report["leftover_consumers"] = [p for p in rolled if alive(p)]
        report["fork_after_cuda_init"] = fork_after_cuda()
    finally:
        if sup.poll() is None:
            sup.kill()
        logf.close()
        print(json.dumps(report, indent=1))
        Path(OUT, "gpu_check.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
