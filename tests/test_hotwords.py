"""Hotwords: sanitized, limited, and handed to FunASR as a file the engine owns (engine/hotwords.py).

The SeACo tests run FunASR's REAL hotword parser (``SeacoParaformer.generate_hotwords_list``) on a
tiny random SeACo-Paraformer, with a real local HTTP server standing in for "a URL a job names".
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Self

import pytest

from funasr_fleet.engine import hotwords
from funasr_fleet.engine.hotwords import MAX_HOTWORD_CHARS, MAX_HOTWORDS, HotwordsInvalid, as_file, sanitize
from funasr_fleet.errors import SchemaInvalid
from funasr_fleet.jobs import JobOptions, parse_job


# --- sanitize (pure) -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ([], []),
        (["", " ", "\t\n", "\u3000"], []),  # blanks (ASCII and ideographic space) are dropped
        (["two words"], ["two words"]),  # a phrase stays ONE hotword
        ([" a \t b\n c "], ["a b c"]),  # whitespace runs become one space
        (
            ["line\nbreak", "cr\rlf", "ls\u2028ps\u2029", "nel\x85x", "ff\x0cvt\x0b"],
            ["line break", "cr lf", "ls ps", "nel x", "ff vt"],
        ),
        (["ctl\x00\x07\x1bchars"], ["ctl chars"]),  # control characters never reach the file
        (["FunASR", "funasr", "FunASR", " FunASR "], ["FunASR", "funasr"]),  # exact duplicates removed, order kept
        (["http://127.0.0.1:1/x.txt", "/etc/passwd.txt"], ["http://127.0.0.1:1/x.txt", "/etc/passwd.txt"]),  # text
        (["阿里巴巴", "达摩院 语音"], ["阿里巴巴", "达摩院 语音"]),
        (["x" * MAX_HOTWORD_CHARS], ["x" * MAX_HOTWORD_CHARS]),
        (["  " + "y" * MAX_HOTWORD_CHARS + "  "], ["y" * MAX_HOTWORD_CHARS]),  # counted after normalising
    ],
)
def test_sanitize(given: list[str], expected: list[str]) -> None:
    assert sanitize(given) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["w"] * (MAX_HOTWORDS + 1), f"{MAX_HOTWORDS + 1} hotwords; the limit is {MAX_HOTWORDS}"),
        (["ok", "z" * (MAX_HOTWORD_CHARS + 1)], f"hotword 1 is {MAX_HOTWORD_CHARS + 1} characters long"),
        (["ok", 5], "hotword 1 is not a string"),
    ],
)
def test_sanitize_limits(given: list[Any], message: str) -> None:
    with pytest.raises(HotwordsInvalid, match=message):
        sanitize(given)


def test_limit_counts_entries_not_distinct_words() -> None:
    assert sanitize(["w"] * MAX_HOTWORDS) == ["w"]


# --- the job schema enforces the same limits --------------------------------------------------------
def _job(hot: Any) -> bytes:
    return json.dumps({"audio": "s3://bkt/a.wav", "options": {"hotwords": hot}}).encode()


def test_job_options_store_sanitized_hotwords() -> None:
    job = parse_job(_job(["  two   words ", "", "two words", "http://10.0.0.1/h.txt"]))
    assert job.options.hotwords == ["two words", "http://10.0.0.1/h.txt"]
    assert JobOptions(hotwords=["a\nb"]).hotwords == ["a b"]


@pytest.mark.parametrize(
    ("hot", "message"),
    [
        (
            ["w"] * (MAX_HOTWORDS + 1),
            f"options.hotwords: {MAX_HOTWORDS + 1} hotwords; the limit is {MAX_HOTWORDS}",
        ),
        (
            ["q" * (MAX_HOTWORD_CHARS + 1)],
            f"options.hotwords: hotword 0 is {MAX_HOTWORD_CHARS + 1} characters long",
        ),
        ([1], "options.hotwords: hotword 0 is not a string"),
        ("one string", "options.hotwords: Input should be a valid list"),
    ],
)
def test_job_options_refuse_with_schema_invalid(hot: Any, message: str) -> None:
    with pytest.raises(SchemaInvalid) as err:
        parse_job(_job(hot))
    assert err.value.code == "schema_invalid"
    assert message in err.value.message


# --- as_file ---------------------------------------------------------------------------------------
def test_as_file_writes_one_per_line_private_and_removes_it(tmp_path: Path) -> None:
    with as_file(["  alpha  beta ", "", "gamma", "alpha beta"], tmp_path) as path:
        assert path is not None
        assert os.path.isabs(path) and path.endswith(".txt") and not path.startswith("http")
        assert Path(path).parent == tmp_path.resolve()
        assert Path(path).read_bytes() == b"alpha beta\ngamma\n"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not os.path.exists(path)


def test_as_file_removes_the_file_when_the_call_fails(tmp_path: Path) -> None:
    seen: list[str] = []
    with pytest.raises(RuntimeError), as_file(["x"], tmp_path) as path:
        assert path is not None
        seen.append(path)
        raise RuntimeError("the model call failed")
    assert seen and not os.path.exists(seen[0])
    assert list(tmp_path.iterdir()) == []


def test_as_file_yields_none_when_nothing_is_left(tmp_path: Path) -> None:
    with as_file(["", "  "], tmp_path) as path:
        assert path is None
    with as_file([], tmp_path) as path:
        assert path is None
    assert list(tmp_path.iterdir()) == []


# --- FunASR's real hotword parser (tiny SeACo-Paraformer) ----------------------------------------------
class _Recorder(http.server.BaseHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        body = b"INJECTED_FROM_URL\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server on loopback that records every request path."""

    class Handler(_Recorder):
        requests: ClassVar[list[str]] = []

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", Handler.requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def seaco_engine(tiny_models_dir: Path) -> Any:
    from funasr_fleet.devmodels import build_tiny_seaco
    from funasr_fleet.engine.pipeline import Engine
    from funasr_fleet.settings import EngineSettings

    seaco = build_tiny_seaco(tiny_models_dir)
    engine = Engine(
        EngineSettings(model=str(seaco), vad_model=str(tiny_models_dir / "vad"), punc_model="", spk_model="", threads=1)
    )
    assert type(engine._model.model).__name__ == "SeacoParaformer"
    return engine


class Spy:
    """Wraps the model's real ``generate_hotwords_list``: records its argument, the file it named
    (read while it still exists) and the hotword list FunASR built; FunASR's code still runs."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.original = model.generate_hotwords_list
        self.calls: list[tuple[Any, str | None, Any]] = []

    def __call__(self, arg: Any, tokenizer: Any = None, frontend: Any = None) -> Any:
        content = Path(arg).read_text() if isinstance(arg, str) and os.path.isfile(arg) else None
        result = self.original(arg, tokenizer=tokenizer, frontend=frontend)
        self.calls.append((arg, content, result))
        return result

    def __enter__(self) -> Self:
        self.model.generate_hotwords_list = self
        return self

    def __exit__(self, *exc: object) -> None:
        del self.model.generate_hotwords_list  # back to the class's method


def test_funasr_itself_fetches_urls_and_reads_files(
    seaco_engine: Any, http_server: tuple[str, list[str]], tmp_path: Path
) -> None:
    """Positive control: handed a hotword STRING, FunASR's parser does fetch and read. This is the
    hazard the engine avoids (and proves the HTTP server would notice a request)."""
    base, requests = http_server
    model, kw = seaco_engine._model.model, seaco_engine._model.kwargs
    model.generate_hotwords_list(f"{base}/x.txt", tokenizer=kw["tokenizer"], frontend=kw["frontend"])
    assert requests == ["/x.txt"]
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("的 一\n是\n")
    parsed = model.generate_hotwords_list(str(sentinel), tokenizer=kw["tokenizer"], frontend=kw["frontend"])
    assert len(parsed) == 3  # two lines read from the file + FunASR's <s> entry


def test_engine_hands_funasr_only_its_own_file(
    seaco_engine: Any, http_server: tuple[str, list[str]], tmp_path: Path, audio_dir: Path
) -> None:
    from funasr_fleet.engine.transcript import TranscribeOptions

    base, requests = http_server
    short = Path(tempfile.mkdtemp(prefix="hw-"))  # tmp_path is longer than a hotword may be
    sentinel = short / "secret.txt"
    sentinel.write_text("SENTINEL_FROM_DISK\n")
    url = f"{base}/hotwords.txt"
    given = (url, str(sentinel), "", "   ", "的 一", "是在", "的  一", "\n")
    expected = [url, str(sentinel), "的 一", "是在"]
    model = seaco_engine._model.model
    with Spy(model) as spy:
        transcript = seaco_engine.transcribe(
            audio_dir / "dialogue.wav", TranscribeOptions(hotwords=given, diarize=False)
        )
    assert transcript.duration_ms > 0
    assert requests == []  # the URL was never fetched
    assert spy.calls, "FunASR's hotword parser was not called"
    for arg, content, parsed in spy.calls:
        assert isinstance(arg, str) and arg.endswith(".txt") and os.path.basename(arg).startswith(hotwords.FILE_PREFIX)
        assert arg not in (url, str(sentinel))
        assert content == "".join(f"{w}\n" for w in expected)  # one hotword per line, blanks gone
        assert "SENTINEL_FROM_DISK" not in content and "INJECTED_FROM_URL" not in content
        assert len(parsed) == len(expected) + 1  # + FunASR's <s>
        assert len(parsed[2]) == 2  # "的 一": ONE hotword of two tokens, not two hotwords
        assert not os.path.exists(arg)  # removed after the call
    shutil.rmtree(short)


def test_funasr_reads_the_engine_file_as_one_hotword_per_line(seaco_engine: Any, tmp_path: Path) -> None:
    model, kw = seaco_engine._model.model, seaco_engine._model.kwargs
    words = ["的 一 是", "http://127.0.0.1:9/never.txt", "/etc/hostname.txt", "在"]
    with as_file(words, tmp_path) as path:
        parsed = model.generate_hotwords_list(path, tokenizer=kw["tokenizer"], frontend=kw["frontend"])
    assert len(parsed) == len(words) + 1
    assert len(parsed[0]) == 3  # a three-word phrase is one hotword of three tokens
    assert parsed[-1] == [model.sos]


def test_no_hotwords_no_file(seaco_engine: Any, audio_dir: Path) -> None:
    from funasr_fleet.engine.transcript import TranscribeOptions

    with Spy(seaco_engine._model.model) as spy:
        seaco_engine.transcribe(audio_dir / "dialogue.wav", TranscribeOptions(hotwords=("", " "), diarize=False))
    assert all(arg is None for arg, _, _ in spy.calls)
