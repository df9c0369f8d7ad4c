"""config/fleet.example.toml documents every key, stays in sync, and loads when uncommented."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from funasr_fleet.config_reference import render_toml
from funasr_fleet.settings import Settings, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "fleet.example.toml"


def test_example_in_sync() -> None:
    assert EXAMPLE.read_text() == render_toml(), (
        "config/fleet.example.toml is stale: `funasr-fleet config-reference --toml > config/fleet.example.toml`"
    )


def test_example_names_every_key() -> None:
    text = EXAMPLE.read_text()
    for section, field in Settings.model_fields.items():
        for key in field.annotation.model_fields:  # type: ignore[union-attr]
            assert f"FLEET_{section.upper()}__{key.upper()}" in text
            assert re.search(rf"^#{key} = ", text, re.M), key


def test_uncommented_example_loads_as_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = re.sub(r"^#([a-z_]+ = (?!\.\.\.).*)$", r"\1", EXAMPLE.read_text(), flags=re.M)
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    for var in [v for v in os.environ if v.startswith("FLEET_")]:
        monkeypatch.delenv(var)
    defaults = Settings().model_dump()
    monkeypatch.setenv("FLEET_CONFIG", str(path))
    assert load_settings().model_dump() == defaults
