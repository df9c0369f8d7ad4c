"""The local stack behind `make demo` / `make down`.

``up``: the system RabbitMQ must already answer (scripts/services.sh starts it), a SeaweedFS S3 server
with its data under ``.stack/s3``, and `funasr-fleet supervise` with 2 consumers, all detached, their
settings written to ``.stack/fleet.env``. ``demo``: ``up``, then drop a synthesised two-speaker
recording into the inbox bucket, let the reconcile sweep enqueue it (SeaweedFS has no bucket
notifications; MinIO does, see the README), wait for the completion event with a progress bar and
print where the outputs are and the first cues. ``down``: stop the supervisor and SeaweedFS (the
system RabbitMQ is left running).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

STACK = Path(os.environ.get("FLEET_STACK_DIR", ".stack")).resolve()
TINY_MODELS = Path(os.environ.get("FLEET_TINY_MODELS_DIR", ".cache/tiny-models")).resolve()
HUB_PROBE = ("www.modelscope.cn", 443)
ENV_FILE = STACK / "fleet.env"
SUPERVISOR_PID = STACK / "supervisor.pid"
SUPERVISOR_LOG = STACK / "fleet.log"
S3_DIR = STACK / "s3"
HTTP_PORT = int(os.environ.get("FLEET_DEMO_HTTP_PORT", "9100"))


def say(msg: str) -> None:
    print(f"demo: {msg}", file=sys.stderr, flush=True)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _hub_reachable() -> bool:
    try:
        with socket.create_connection(HUB_PROBE, timeout=3):
            return True
    except OSError:
        return False


def _read_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                env[key] = value
    return env


def _write_env(env: dict[str, str]) -> None:
    STACK.mkdir(parents=True, exist_ok=True)
    ENV_FILE.write_text("".join(f"{k}={v}\n" for k, v in sorted(env.items())))
    ENV_FILE.chmod(0o600)  # holds the local S3 secret


def _model_env() -> tuple[dict[str, str], bool]:
    """Engine settings: the user's (env), the real models by name (hub reachable), else tiny test models."""
    configured = {k: v for k, v in os.environ.items() if k.startswith("FLEET_ENGINE__")}
    if "FLEET_ENGINE__MODEL" in configured:
        return configured, False
    if _hub_reachable():
        say("model hub reachable: using the real FunASR models by name (first run downloads them)")
        return configured, False
    from funasr_fleet.devmodels import build_tiny_models

    return {**configured, **build_tiny_models(TINY_MODELS).env()}, True


def _s3_up(env: dict[str, str]) -> str:
    from funasr_fleet.seaweed import SeaweedServer

    existing = SeaweedServer.adopt(S3_DIR, secret_key=env["FLEET_S3__SECRET_KEY"])
    if existing is not None:
        return existing.endpoint_url
    S3_DIR.mkdir(parents=True, exist_ok=True)
    server = SeaweedServer(S3_DIR, access_key=env["FLEET_S3__ACCESS_KEY"], secret_key=env["FLEET_S3__SECRET_KEY"])
    server.start(detach=True)
    say(f"SeaweedFS S3 at {server.endpoint_url} (data in {S3_DIR})")
    return server.endpoint_url


def _supervisor_pid() -> int | None:
    try:
        pid = int(SUPERVISOR_PID.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def up() -> tuple[dict[str, str], bool]:
    env = _read_env(ENV_FILE)
    if "FLEET_S3__SECRET_KEY" not in env:
        env["FLEET_S3__ACCESS_KEY"] = "fleet" + secrets.token_hex(4)
        env["FLEET_S3__SECRET_KEY"] = secrets.token_urlsafe(24)
    model_env, tiny = _model_env()
    env.update(model_env)
    env.setdefault("FLEET_AMQP__URL", os.environ.get("FLEET_AMQP__URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    env["FLEET_S3__ENDPOINT_URL"] = _s3_up(env)
    env["FLEET_SUPERVISOR__STATE_DIR"] = str(STACK / "supervisor")
    env["FLEET_SUPERVISOR__HTTP_HOST"] = "127.0.0.1"
    env["FLEET_DEMO_TINY_MODELS"] = "1" if tiny else "0"
    if _supervisor_pid() is None:
        port = HTTP_PORT if _port_free(HTTP_PORT) else _free_port()
        env["FLEET_SUPERVISOR__HTTP_PORT"] = str(port)
    _write_env(env)

    _ensure_buckets(env)
    if _supervisor_pid() is None:
        child_env = {**os.environ, **env}
        log = SUPERVISOR_LOG.open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "funasr_fleet", "supervise", "--consumers", "2"],
            env=child_env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        SUPERVISOR_PID.write_text(str(proc.pid))
        say(f"started `funasr-fleet supervise --consumers 2` (pid {proc.pid}, log {SUPERVISOR_LOG})")
    _wait_ready(int(env["FLEET_SUPERVISOR__HTTP_PORT"]))
    return env, tiny


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings(env: dict[str, str]):  # type: ignore[no-untyped-def]
    os.environ.update(env)
    from funasr_fleet.settings import load_settings

    return load_settings()


def _ensure_buckets(env: dict[str, str]) -> None:
    from funasr_fleet.storage import Storage

    settings = _settings(env)
    storage = Storage(settings.s3)
    storage.ensure_bucket(settings.s3.inbox_bucket)
    storage.ensure_bucket(settings.s3.results_bucket)


def _wait_ready(port: int, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{port}/readyz"
    say(f"waiting for a consumer to load its model ({url})")
    while time.monotonic() < deadline:
        if _supervisor_pid() is None:
            tail = SUPERVISOR_LOG.read_text(errors="replace").splitlines()[-15:] if SUPERVISOR_LOG.exists() else []
            raise SystemExit("demo: the supervisor exited:\n" + "\n".join(tail))
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    say("fleet ready")
                    return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"demo: fleet not ready after {timeout_s:.0f} s; see {SUPERVISOR_LOG}")


def demo() -> int:
    env, tiny = up()
    settings = _settings(env)
    if tiny:
        say("NOTE: no model hub and no model directory configured, so this demo uses the tiny OFFLINE TEST")
        say("      models (random weights): the pipeline is real, but the transcript TEXT IS MEANINGLESS.")
        say("      Set FLEET_ENGINE__MODEL etc. to real model names or directories for real transcripts.")
    from funasr_fleet.devaudio import synth_dialogue
    from funasr_fleet.storage import Storage

    sample = STACK / "sample" / "demo-dialogue.wav"
    sample.parent.mkdir(parents=True, exist_ok=True)
    if not sample.exists():
        synth_dialogue(sample)
    key = (settings.s3.inbox_prefix.rstrip("/") + "/" if settings.s3.inbox_prefix else "") + f"demo/{sample.name}"
    storage = Storage(settings.s3)
    storage.upload_file(sample, settings.s3.inbox_bucket, key, content_type="audio/wav")
    say(f"dropped {sample.name} into s3://{settings.s3.inbox_bucket}/{key}")
    return _enqueue_and_wait(settings, storage, key)


def _enqueue_and_wait(settings, storage, key: str) -> int:  # type: ignore[no-untyped-def]
    from funasr_fleet import client, intake, reconcile
    from funasr_fleet.publisher import Publisher

    bucket = settings.s3.inbox_bucket
    job = intake.job_for_object(settings, bucket, key, storage.head(bucket, key).etag, via="sweep")
    with Publisher(settings) as publisher:
        report = reconcile.sweep(settings, storage, publisher)
    say(f"reconcile sweep: {report}")
    # Answered from the manifest at once when an earlier demo run already transcribed this file.
    results = [client.wait(settings, str(job.job_id), 900, output=job.output, progress=True)]
    rc = 0
    for result in results:
        if result.status != "succeeded":
            say(f"job {result.job_id} failed: {result.error_code}: {result.error_message}")
            rc = 1
            continue
        print(f"job {result.job_id} succeeded; outputs:")
        for uri in result.outputs:
            print(f"  {uri}")
        srt = next((u for u in result.outputs if u.endswith(".srt")), None)
        if srt:
            bucket, _, obj = srt[len("s3://") :].partition("/")
            cues = storage.get_bytes(bucket, obj).decode().strip().split("\n\n")[:3]
            print("first cues:\n" + "\n\n".join(cues))
    print(f"\nThe stack keeps running (settings in {ENV_FILE}); stop it with `make down`.")
    return rc


def down() -> int:
    pid = _supervisor_pid()
    if pid is not None:
        say(f"stopping the supervisor (pid {pid}; consumers drain their current job)")
        os.kill(pid, signal.SIGTERM)
        for _ in range(120):
            if _supervisor_pid() is None:
                break
            time.sleep(0.5)
        else:
            os.kill(pid, signal.SIGKILL)
    SUPERVISOR_PID.unlink(missing_ok=True)
    from funasr_fleet.seaweed import SeaweedServer

    server = SeaweedServer.adopt(S3_DIR)
    if server is not None:
        say("stopping SeaweedFS")
        server.stop()
    say("stack down (the system RabbitMQ is left running)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m funasr_fleet.devstack", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "demo", "down"])
    args = parser.parse_args(argv)
    from funasr_fleet.logs import setup_logging

    setup_logging("WARNING", "console")
    if args.action == "up":
        up()
        return 0
    if args.action == "demo":
        return demo()
    return down()


if __name__ == "__main__":
    raise SystemExit(main())
