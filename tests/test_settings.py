"""Settings: env and TOML sources, precedence, errors that name the key and the variable, secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from funasr_fleet import settings as settings_mod
from funasr_fleet.errors import ConfigError
from funasr_fleet.settings import Settings, config_file, load_settings, usable_cores

PASSWORD = "hunter2-Secret"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No FLEET_* variable or config/fleet.toml of the machine leaks in."""
    for name in list(os.environ):
        if name.startswith("FLEET_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    s = load_settings()
    assert s.engine.model == "paraformer-zh" and s.engine.device == "cpu" and s.engine.threads is None
    assert s.outputs.default_formats == ["json", "srt"]
    assert s.supervisor.consumers == "auto" and s.amqp.prefetch == 1
    assert config_file() is None


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_ENGINE__DEVICE", "cuda:0")
    monkeypatch.setenv("FLEET_ENGINE__THREADS", "4")
    monkeypatch.setenv("FLEET_ENGINE__TURN_GAP_S", "1.5")
    monkeypatch.setenv("FLEET_S3__ALLOWED_BUCKETS", '["a-bucket", "b-bucket"]')
    monkeypatch.setenv("FLEET_CONSUMER__RESULT_REUSE", "false")
    monkeypatch.setenv("FLEET_LOG__LEVEL", "DEBUG")
    s = load_settings()
    assert s.engine.device == "cuda:0" and s.engine.threads == 4 and s.engine.turn_gap_s == 1.5
    assert s.s3.allowed_buckets == ["a-bucket", "b-bucket"]
    assert s.consumer.result_reuse is False and s.log.level == "DEBUG"
    assert s.engine.model == "paraformer-zh"  # untouched keys keep their defaults


@pytest.mark.parametrize(("value", "expected"), [("4", 4), ("auto", "auto")])
def test_env_union_value(monkeypatch: pytest.MonkeyPatch, value: str, expected: int | str) -> None:
    monkeypatch.setenv("FLEET_SUPERVISOR__CONSUMERS", value)
    assert load_settings().supervisor.consumers == expected


def test_toml_via_fleet_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "elsewhere" / "fleet.toml",
        '[engine]\ndevice = "cuda:1"\nthreads = 3\n\n[s3]\nallowed_buckets = ["x-bucket"]\n'
        "\n[supervisor]\nconsumers = 2\n",
    )
    monkeypatch.setenv("FLEET_CONFIG", str(path))
    assert config_file() == path
    s = load_settings()
    assert (s.engine.device, s.engine.threads, s.s3.allowed_buckets, s.supervisor.consumers) == (
        "cuda:1",
        3,
        ["x-bucket"],
        2,
    )


def test_precedence_arguments_env_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_toml(tmp_path / "f.toml", '[engine]\ndevice = "from-toml"\nthreads = 3\nmodel = "toml-model"\n')
    monkeypatch.setenv("FLEET_CONFIG", str(path))
    monkeypatch.setenv("FLEET_ENGINE__DEVICE", "from-env")
    monkeypatch.setenv("FLEET_ENGINE__THREADS", "5")
    s = load_settings()
    assert (s.engine.device, s.engine.threads, s.engine.model) == ("from-env", 5, "toml-model")
    s = load_settings(engine={"device": "from-arg"})
    assert (s.engine.device, s.engine.threads, s.engine.model) == ("from-arg", 5, "toml-model")


def test_default_config_file_in_working_dir(_isolated: Path) -> None:
    write_toml(_isolated / "config" / "fleet.toml", '[log]\nformat = "json"\n')
    assert config_file() == settings_mod.DEFAULT_CONFIG_FILE
    assert load_settings().log.format == "json"


def test_fleet_config_missing_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLEET_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "FLEET_CONFIG" in info.value.message and info.value.code == "config_invalid"


def test_fleet_config_invalid_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_toml(tmp_path / "broken.toml", "[engine\ndevice = ")
    monkeypatch.setenv("FLEET_CONFIG", str(path))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(path) in info.value.message


@pytest.mark.parametrize(
    ("env", "value", "key"),
    [
        ("FLEET_S3__MAX_OBJECT_BYTES", "-1", "s3.max_object_bytes"),
        ("FLEET_ENGINE__THREADS", "0", "engine.threads"),
        ("FLEET_ENGINE__THREADS", "many", "engine.threads"),
        ("FLEET_LOG__LEVEL", "LOUD", "log.level"),
        ("FLEET_OUTPUTS__DEFAULT_FORMATS", '["json", "pdf"]', "outputs.default_formats"),
        ("FLEET_SUPERVISOR__CONSUMERS", "lots", "supervisor.consumers"),
        ("FLEET_SUPERVISOR__HTTP_PORT", "70000", "supervisor.http_port"),
        ("FLEET_AMQP__PREFETCH", "0", "amqp.prefetch"),
        ("FLEET_S3__ADDRESSING_STYLE", "sideways", "s3.addressing_style"),
        ("FLEET_ENGINE__NO_SUCH_KEY", "1", "engine.no_such_key"),
    ],
)
def test_invalid_env_value_names_key_and_variable(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, key: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = info.value.message
    assert info.value.code == "config_invalid"
    assert f"{key} ({env})" in message, message
    assert "__INT" not in message and "LITERAL" not in message  # union members are not env variables


def test_invalid_toml_value_names_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_toml(tmp_path / "f.toml", "[amqp]\nheartbeat_s = -5\n\n[nosuchsection]\nx = 1\n")
    monkeypatch.setenv("FLEET_CONFIG", str(path))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "amqp.heartbeat_s (FLEET_AMQP__HEARTBEAT_S)" in info.value.message
    assert "nosuchsection" in info.value.message


def test_all_errors_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_ENGINE__THREADS", "0")
    monkeypatch.setenv("FLEET_LOG__LEVEL", "LOUD")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "FLEET_ENGINE__THREADS" in info.value.message and "FLEET_LOG__LEVEL" in info.value.message


# --- secrets -----------------------------------------------------------------------------------------
def test_secrets_never_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_AMQP__URL", f"amqp://fleet:{PASSWORD}@rabbit:5672/%2F")
    monkeypatch.setenv("FLEET_S3__ACCESS_KEY", f"AK-{PASSWORD}")
    monkeypatch.setenv("FLEET_S3__SECRET_KEY", f"SK-{PASSWORD}")
    s = load_settings()
    for text in (repr(s), str(s), s.model_dump_json(), str(s.model_dump()), repr(s.amqp), str(s.s3), f"{s.amqp.url}"):
        assert PASSWORD not in text
    assert PASSWORD in s.amqp.url.get_secret_value()
    assert s.s3.credential("access_key") == f"AK-{PASSWORD}"
    assert s.s3.credential("secret_key") == f"SK-{PASSWORD}"


def test_secret_not_echoed_in_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_AMQP__URL", f"amqp://fleet:{PASSWORD}@rabbit/")
    monkeypatch.setenv("FLEET_AMQP__HEARTBEAT_S", "-1")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert PASSWORD not in info.value.message


def test_secret_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "ak").write_text("AKIAFILE\n")
    (tmp_path / "sk").write_text(f"  {PASSWORD}  \n")
    monkeypatch.setenv("FLEET_S3__ACCESS_KEY_FILE", str(tmp_path / "ak"))
    monkeypatch.setenv("FLEET_S3__SECRET_KEY_FILE", str(tmp_path / "sk"))
    s = load_settings()
    assert s.s3.credential("access_key") == "AKIAFILE"  # trailing newline of a secret mount stripped
    assert s.s3.credential("secret_key") == PASSWORD
    assert PASSWORD not in s.model_dump_json()  # the dump shows the path, never the content
    monkeypatch.setenv("FLEET_S3__ACCESS_KEY", "direct")
    assert load_settings().s3.credential("access_key") == "direct"  # the value beats the file


def test_no_credentials() -> None:
    s = load_settings()
    assert s.s3.credential("access_key") is None and s.s3.credential("secret_key") is None


# --- cores -------------------------------------------------------------------------------------------
def test_usable_cores() -> None:
    cores = usable_cores()
    assert isinstance(cores, int) and 1 <= cores <= (os.cpu_count() or 1)


@pytest.mark.parametrize(("quota", "expected_max"), [(0.25, 1), (1.5, 1), (None, None)])
def test_usable_cores_honours_cgroup_quota(
    monkeypatch: pytest.MonkeyPatch, quota: float | None, expected_max: int | None
) -> None:
    monkeypatch.setattr(settings_mod, "_cgroup_cpu_limit", lambda: quota)
    cores = usable_cores()
    assert cores >= 1
    if expected_max is not None:
        assert cores <= expected_max


def test_every_key_is_documented() -> None:
    """The configuration reference (docs/configuration.md) is generated from the descriptions."""
    for section_name, section in Settings.model_fields.items():
        for key, field in section.annotation.model_fields.items():  # type: ignore[union-attr]
            assert field.description, f"[{section_name}] {key} has no description"
