"""A job's hotwords, made safe to hand to FunASR.

FunASR's hotword-capable models (SeACo-Paraformer, Contextual Paraformer) take ``hotword`` as ONE
string and interpret it: a string starting with ``http`` is downloaded (``requests.get``, no
timeout), a string naming an existing ``.txt`` file is read from disk, anything else is split on
whitespace (so a phrase becomes several hotwords, and blanks pass through). Hotwords come from job
messages, which are untrusted: they must never make a consumer fetch a URL or read a file.

So the engine never hands FunASR the words themselves. ``as_file`` writes the sanitized hotwords
to a temporary ``.txt`` file the engine owns, one per line, and hands FunASR that file's absolute
path; FunASR reads it line by line, so every line is exactly one hotword (a phrase stays one
hotword; a line that looks like a URL or a path is just text). The file is removed after the call.

Limits (the job schema enforces the same ones, ``jobs.JobOptions``): at most :data:`MAX_HOTWORDS`
entries and :data:`MAX_HOTWORD_CHARS` characters per hotword after normalisation.
"""

from __future__ import annotations

import contextlib
import locale
import os
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path

from funasr_fleet.errors import EngineError

MAX_HOTWORDS = 200
"""Entries per job (blanks and duplicates included: the limit bounds the request, not the result)."""
MAX_HOTWORD_CHARS = 64
"""Characters per hotword after whitespace normalisation (FunASR advises about 10 tokens; phrases
of a few words fit comfortably)."""
FILE_PREFIX = "fleet-hotwords-"


class HotwordsInvalid(ValueError):
    """The hotwords break a documented limit (the message names which and by how much)."""


def normalise(hotword: str) -> str:
    """One hotword as FunASR will see it: control characters and every run of whitespace (tabs,
    line breaks, NBSP, U+2028, ...) become one space; leading/trailing space is dropped."""
    cleaned = "".join(" " if unicodedata.category(c) == "Cc" else c for c in hotword)
    return " ".join(cleaned.split())


def sanitize(hotwords: Iterable[str]) -> list[str]:
    """The hotwords FunASR gets: normalised, blanks dropped, duplicates removed (first kept, order kept).

    Raises HotwordsInvalid when there are more than MAX_HOTWORDS entries, an entry is not a string,
    or one is longer than MAX_HOTWORD_CHARS characters once normalised.
    """
    items = list(hotwords)
    if len(items) > MAX_HOTWORDS:
        raise HotwordsInvalid(f"{len(items)} hotwords; the limit is {MAX_HOTWORDS}")
    out: dict[str, None] = {}
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise HotwordsInvalid(f"hotword {i} is not a string ({type(item).__name__})")
        word = normalise(item)
        if len(word) > MAX_HOTWORD_CHARS:
            raise HotwordsInvalid(f"hotword {i} is {len(word)} characters long; the limit is {MAX_HOTWORD_CHARS}")
        if word:
            out.setdefault(word, None)
    return list(out)


@contextlib.contextmanager
def as_file(hotwords: Iterable[str], directory: str | Path | None = None) -> Iterator[str | None]:
    """Yield the value for FunASR's ``hotword`` argument: the absolute path of a temporary ``.txt``
    file holding the sanitized hotwords one per line, or None when none are left (pass nothing).

    The file lives in ``directory`` (default: the system temp dir), is private to this process
    (mode 0600) and is removed when the block exits, whatever happens. It is written in the
    encoding FunASR reads it with (the locale's preferred encoding; UTF-8 in UTF-8 mode and in
    every usual container locale). Raises HotwordsInvalid (see ``sanitize``), and EngineError when
    a hotword cannot be written in that encoding (a non-UTF-8 locale: a deployment problem).
    """
    words = sanitize(hotwords)
    if not words:
        yield None
        return
    encoding = locale.getpreferredencoding(False)
    try:
        data = "".join(f"{w}\n" for w in words).encode(encoding)
    except UnicodeEncodeError as exc:
        raise EngineError(
            f"a hotword cannot be written in the locale encoding {encoding} (FunASR reads hotword files with it): "
            f"{exc.reason}; run the consumer in a UTF-8 locale (e.g. LANG=C.UTF-8)"
        ) from None
    root = os.path.abspath(directory if directory is not None else tempfile.gettempdir())
    fd, path = tempfile.mkstemp(prefix=FILE_PREFIX, suffix=".txt", dir=root)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
