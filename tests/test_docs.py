"""The README's configuration reference is the generated one (``funasr-fleet config-reference``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from funasr_fleet import config_reference
from funasr_fleet.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"
HOW_TO_FIX = (
    "regenerate it: replace everything from the begin marker to the end marker in README.md with the "
    "output of `funasr-fleet config-reference`"
)


def _readme_block() -> str:
    if not README.is_file():
        pytest.skip("README.md does not exist yet")
    text = README.read_text(encoding="utf-8")
    has_begin, has_end = config_reference.BEGIN in text, config_reference.END in text
    if not has_begin and not has_end:
        pytest.skip("README.md has no config-reference BEGIN/END markers yet (added when the docs are merged)")
    assert has_begin and has_end, f"README.md has only one of the config-reference markers; {HOW_TO_FIX}"
    start = text.index(config_reference.BEGIN)
    end = text.index(config_reference.END, start) + len(config_reference.END)
    assert text.count(config_reference.BEGIN) == 1, "README.md has the config-reference block twice"
    return text[start:end]


def test_readme_config_reference_in_sync() -> None:
    block = _readme_block()
    assert block == config_reference.render().rstrip("\n"), f"README.md configuration reference is stale; {HOW_TO_FIX}"


def test_reference_covers_every_key_and_hides_secrets() -> None:
    rendered = config_reference.render()
    assert rendered.startswith(config_reference.BEGIN) and rendered.rstrip("\n").endswith(config_reference.END)
    for section_name, section in Settings.model_fields.items():
        for key in section.annotation.model_fields:  # type: ignore[union-attr]
            assert f"`FLEET_{section_name.upper()}__{key.upper()}`" in rendered
            assert f"`[{section_name}] {key}`" in rendered
    assert "guest:guest" not in rendered  # the default broker URL holds a password: shown as (secret)
    assert config_reference.render() == rendered  # deterministic
