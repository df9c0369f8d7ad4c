"""The documentation: a short README, topic pages under docs/ that build, and nothing lost in the move.

- ``mkdocs build --strict`` succeeds (every page in the nav, no broken link or anchor);
- README.md is at most 300 lines and holds the two set-up commands (``make demo``, ``make test``);
- every heading, table row and line of a fenced block of the README as it was before the split
  (commit ``85e6146``, ~2,080 lines) appears in README.md or docs/**/*.md;
- every relative link in README.md resolves;
- docs/configuration.md holds the generated configuration reference (``funasr-fleet config-reference``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from funasr_fleet import config_reference
from funasr_fleet.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIG_PAGE = DOCS / "configuration.md"
BASELINE_COMMIT = "85e6146"  # the last commit with the ~2,080-line README
README_MAX_LINES = 300
HOW_TO_FIX = (
    "regenerate it: replace everything from the begin marker to the end marker in docs/configuration.md with the "
    "output of `funasr-fleet config-reference`"
)

# Lines of the old README rewritten on purpose when they moved (old line -> where its content went).
# Links are compared by their text only (targets changed from README anchors to pages), so only real
# rewrites are listed here.
REWRITTEN = {
    # the engine's section became a page that also covers the ONNX backend and the full-size models
    "The transcription engine": "# The engine and its backends",
    # the setting's description pointed at the README; it now points at the page that explains it
    "| `FLEET_AMQP__MAX_PRIORITY` | `[amqp] max_priority` | `0` | 0: no priorities. Quorum queues on RabbitMQ "
    "3.10 ignore x-max-priority (see README). |": "| `FLEET_AMQP__MAX_PRIORITY` | `[amqp] max_priority` | `0` | "
    "0: no priorities. Quorum queues on RabbitMQ 3.10 ignore x-max-priority (see docs/consumer.md). |",
    # the windowed engine added a stage between decoded and transcribed
    "| `progress` | after each stage: `downloaded` (0.1), `decoded` (0.2), `transcribed` (0.8), `uploaded` (0.95); "
    'and `retrying` (a transient failure was scheduled for another attempt) | `status: "running"`, `stage`, '
    "`progress` (0..1); `retrying` also carries `error` |": "| `progress` | after each stage: `downloaded` (0.1), "
    "`decoded` (0.2), `transcribing` (between 0.2 and 0.8, after each window of a recording longer than "
    "`engine.window_s`), `transcribed` (0.8), `uploaded` (0.95); and `retrying` (a transient failure was scheduled "
    'for another attempt) | `status: "running"`, `stage`, `progress` (0..1); `retrying` also carries `error` |',
}

_LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _norm(line: str) -> str:
    """One line for comparison: link targets dropped (text kept), whitespace collapsed."""
    return " ".join(_LINK.sub(r"\1", line).split())


def _items(text: str) -> tuple[set[str], set[str], set[str]]:
    """(heading texts, table rows, lines inside fenced blocks) of a Markdown text, normalised."""
    headings: set[str] = set()
    rows: set[str] = set()
    fenced: set[str] = set()
    in_fence = False
    for raw in text.splitlines():
        if _FENCE.match(raw):
            in_fence = not in_fence
            continue
        line = _norm(raw)
        if not line:
            continue
        if in_fence:
            fenced.add(line)
        elif line.startswith("#"):
            headings.add(line.lstrip("#").strip())
        elif line.startswith("|"):
            rows.add(line)
    return headings, rows, fenced


@cache
def _new_corpus() -> tuple[set[str], set[str], set[str], set[str]]:
    """Headings, table rows, fenced lines and all lines of README.md and docs/**/*.md (drafts excluded)."""
    files = [README, *sorted(p for p in DOCS.rglob("*.md") if "drafts" not in p.parts)]
    headings: set[str] = set()
    rows: set[str] = set()
    fenced: set[str] = set()
    every: set[str] = set()
    for path in files:
        text = path.read_text(encoding="utf-8")
        h, r, f = _items(text)
        headings |= h
        rows |= r
        fenced |= f
        every |= {_norm(line) for line in text.splitlines()}
    return headings, rows, fenced, every


def _old_readme() -> str:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    done = subprocess.run(
        ["git", "show", f"{BASELINE_COMMIT}:README.md"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"commit {BASELINE_COMMIT} is not in this checkout (shallow clone?): {done.stderr.strip()}")
    return done.stdout


# -- mkdocs ------------------------------------------------------------------------------------------------


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is in the test extra (pip install -e '.[test]')")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # material's end-of-life banner: noise in a test log
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()


def test_every_page_is_in_the_nav() -> None:
    class Loader(yaml.SafeLoader):
        """mkdocs.yml names a Python function (!!python/name:...) for the mermaid fence: read it as None."""

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=Loader)

    def pages(nav: object) -> set[str]:
        if isinstance(nav, str):
            return {nav}
        if isinstance(nav, list):
            return set().union(*(pages(item) for item in nav))
        if isinstance(nav, dict):
            return set().union(*(pages(value) for value in nav.values()))
        return set()

    listed = pages(config["nav"])
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if "drafts" not in p.parts}
    assert on_disk - listed == set(), "pages missing from mkdocs.yml's nav"
    assert listed - on_disk == set(), "mkdocs.yml's nav names pages that do not exist"


# -- the README --------------------------------------------------------------------------------------------


def test_readme_is_short_and_has_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; keep it <= {README_MAX_LINES}"
    commands = [line.split("#")[0].strip() for line in lines]
    assert "make demo" in commands, "README.md must show `make demo` as a command line"
    assert "make test" in commands, "README.md must show `make test` as a command line"
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test", "docs"):
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no `{target}` target"


def test_readme_relative_links_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    anchors = {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}
    broken = []
    for _, target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        if not path:
            if anchor not in anchors:
                broken.append(target)
            continue
        if not (README.parent / path).exists():
            broken.append(target)
    assert broken == [], f"README.md links that do not resolve: {broken}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = _LINK.sub(r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


# -- nothing lost ------------------------------------------------------------------------------------------


def _missing(old: set[str], new: set[str], every: set[str]) -> list[str]:
    rewritten = {_norm(k): _norm(v) for k, v in REWRITTEN.items()}
    lost = []
    for item in sorted(old):
        if item in new:
            continue
        if item in rewritten and rewritten[item] in every:
            continue
        lost.append(item)
    return lost


def test_nothing_lost_headings() -> None:
    old, _, _ = _items(_old_readme())
    headings, _, _, every = _new_corpus()
    lost = _missing(old, headings, every)
    assert lost == [], f"headings of the old README found in no page: {lost}"


def test_nothing_lost_table_rows() -> None:
    _, old, _ = _items(_old_readme())
    _, rows, _, every = _new_corpus()
    lost = _missing(old, rows, every)
    assert lost == [], f"table rows of the old README found in no page: {lost}"


def test_nothing_lost_fenced_lines() -> None:
    _, _, old = _items(_old_readme())
    _, _, fenced, every = _new_corpus()
    lost = _missing(old, fenced, every)
    assert lost == [], f"lines of fenced blocks (commands, examples) of the old README found in no page: {lost}"


# -- the configuration reference ---------------------------------------------------------------------------


def _config_block() -> str:
    text = CONFIG_PAGE.read_text(encoding="utf-8")
    has_begin, has_end = config_reference.BEGIN in text, config_reference.END in text
    assert has_begin and has_end, f"docs/configuration.md lacks the config-reference markers; {HOW_TO_FIX}"
    assert text.count(config_reference.BEGIN) == 1, "docs/configuration.md has the config-reference block twice"
    start = text.index(config_reference.BEGIN)
    end = text.index(config_reference.END, start) + len(config_reference.END)
    return text[start:end]


def test_config_reference_page_in_sync() -> None:
    block = _config_block()
    assert block == config_reference.render().rstrip("\n"), f"docs/configuration.md is stale; {HOW_TO_FIX}"


def test_config_reference_command_prints_the_block() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "funasr_fleet", "config-reference"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == config_reference.render()


def test_reference_covers_every_key_and_hides_secrets() -> None:
    rendered = config_reference.render()
    assert rendered.startswith(config_reference.BEGIN) and rendered.rstrip("\n").endswith(config_reference.END)
    for section_name, section in Settings.model_fields.items():
        for key in section.annotation.model_fields:  # type: ignore[union-attr]
            assert f"`FLEET_{section_name.upper()}__{key.upper()}`" in rendered
            assert f"`[{section_name}] {key}`" in rendered
    assert "guest:guest" not in rendered  # the default broker URL holds a password: shown as (secret)
    assert config_reference.render() == rendered  # deterministic
