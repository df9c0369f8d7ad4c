"""Sentences and tokens from FunASR's result, split where the speaker paused (pure, no torch).

Times are integer milliseconds from the start of the audio. A *token* is one timed text unit as
FunASR's timestamps count them: a CJK character, or a whole space-separated word (punctuation is
not a token). A *pause* is the silence between two consecutive tokens (``next.start_ms`` minus the
latest ``end_ms`` before it).

The pause rule: no sentence spans a pause longer than ``max_pause_ms`` (the engine passes the
VAD's end-of-speech silence, ``engine.max_end_silence_ms``), nor a gap between two VAD segments,
whatever the punctuation model did. FunASR's punctuation splitter ignores pauses, and it starts
each sentence where the previous one ended, so a sentence can claim seconds of silence; here a
sentence with tokens spans exactly its tokens, and is cut into pieces at every longer pause. A
pause of exactly ``max_pause_ms`` does not split. Turns follow the same rule (``turns.py``).
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from funasr_fleet.engine.transcript import Sentence, Token

__all__ = [
    "PUNCT",
    "SENTENCE_RULES",
    "TokenIndex",
    "join_text",
    "sentences_from_result",
    "split_at_pauses",
    "split_sentences",
    "text_units",
    "tokens_from_stamps",
]

SENTENCE_RULES = "pause-split/1"
"""Version of the rules that group tokens into sentences and turns; part of the engine fingerprint,
so a result cached under older rules is not reused as if it were current."""

PUNCT = frozenset("，。？！、；：,.?!;:\"'“”‘’（）()[]【】《》<>-—…·")
_OPENING = frozenset("“‘（([【《<")  # belong to the text after them when a sentence is cut
_CJK = r"\u3400-\u9fff\uf900-\ufaff"
_UNIT = re.compile(f"[{_CJK}]|[^{_CJK}]+")

VadSegments = Sequence[tuple[int, int]]
"""VAD speech segments ``[(start_ms, end_ms), ...]``; a gap between two of them is non-speech."""


def text_units(text: str) -> list[str]:
    """Token units as FunASR's timestamps count them: CJK characters one by one, other words whole,
    punctuation dropped. ``"你好, big world。"`` → ``["你", "好", "big", "world"]``."""
    units: list[str] = []
    for word in text.split():
        for piece in _UNIT.findall(word):
            piece = "".join(c for c in piece if c not in PUNCT)
            if piece:
                units.append(piece)
    return units


def join_text(parts: Iterable[str]) -> str:
    """Join text pieces: no space between CJK characters, one space where either side is ASCII
    (none before a punctuation mark). ``["你", "好", "big"]`` → ``"你好 big"``."""
    out = ""
    for part in parts:
        part = part.strip()
        if not part:
            continue
        if out and (out[-1].isascii() or part[0].isascii()) and part[0] not in "，。？！、,.?!":
            out += " "
        out += part
    return out


def tokens_from_stamps(text: str, stamps: Sequence[Any], duration_ms: int) -> tuple[Token, ...]:
    """Pair ``text_units(text)`` with FunASR's ``[[start_ms, end_ms], ...]`` one to one; times
    clamped to ``[0, duration_ms]``. Returns ``()`` when the counts differ (FunASR's per-sentence
    stamps can be off by one unit at sentence edges; ``TokenIndex`` is the fallback)."""
    units = text_units(text)
    pairs = [(int(t[0]), int(t[1])) for t in stamps if isinstance(t, (list, tuple)) and len(t) >= 2]
    if not pairs or len(units) != len(pairs):
        return ()
    out = []
    for unit, (s, e) in zip(units, pairs, strict=False):
        s = _clamp(s, 0, duration_ms)
        out.append(Token(unit, s, _clamp(e, s, duration_ms)))
    return tuple(out)


class TokenIndex:
    """Tokens sorted by midpoint; ``between`` is a binary search (hours of audio: 10^4+ tokens)."""

    def __init__(self, tokens: Iterable[Token]) -> None:
        self._tokens = sorted(tokens, key=_mid)
        self._mids = [_mid(t) for t in self._tokens]

    def between(self, start_ms: int, end_ms: int) -> tuple[Token, ...]:
        """Tokens whose midpoint lies in ``[start_ms, end_ms)``, in time order."""
        lo = bisect.bisect_left(self._mids, start_ms)
        hi = bisect.bisect_left(self._mids, end_ms, lo)
        return tuple(self._tokens[lo:hi])


def sentences_from_result(
    raw: dict[str, Any],
    duration_ms: int,
    *,
    diarized: bool,
    max_pause_ms: int,
    vad_segments: VadSegments = (),
) -> list[Sentence]:
    """One FunASR ``generate`` result (``{"text", "timestamp", "sentence_info"?}``) → sentences in
    time order, split at pauses (``split_at_pauses``). Speakers are FunASR's cluster ids as given
    (``spk``; 0 when diarized and missing, None when not diarized): number them with
    ``turns.relabel_speakers`` after any re-assignment. Without ``sentence_info`` (no punctuation
    and no speaker model) the whole text is one sentence before splitting."""
    text = str(raw.get("text", "")).strip()
    stamps = raw.get("timestamp") or []
    items = raw.get("sentence_info")
    if not items and text:
        items = [{"start": _first(stamps, 0), "end": _last(stamps, 0), "text": text, "timestamp": stamps}]
    all_tokens = TokenIndex(tokens_from_stamps(text, stamps, duration_ms))
    sentences: list[Sentence] = []
    for item in items or []:
        item_text = str(item.get("text", "")).strip()
        if not item_text:
            continue
        if _punct_only(item_text):
            # FunASR's splitter sometimes leaves a sentence-final mark on its own: glue it back
            if sentences and sentences[-1].text[-1] not in PUNCT:
                sentences[-1] = replace(sentences[-1], text=sentences[-1].text + item_text)
            continue
        start = _clamp(int(item.get("start", 0)), 0, duration_ms)
        end = _clamp(int(item.get("end", start)), start, duration_ms)
        spk = item.get("spk") if diarized else None
        own = tokens_from_stamps(item_text, item.get("timestamp") or [], duration_ms)
        tokens = own or all_tokens.between(start, end)
        speaker = int(spk) if spk is not None else (0 if diarized else None)
        sentences.append(Sentence(start, end, item_text, speaker, tokens))
    return split_sentences(sentences, max_pause_ms=max_pause_ms, vad_segments=vad_segments)


def split_sentences(
    sentences: Iterable[Sentence], *, max_pause_ms: int, vad_segments: VadSegments = ()
) -> list[Sentence]:
    """``split_at_pauses`` over many sentences; the pieces sorted by ``(start_ms, end_ms)``."""
    vad = _VadIndex(vad_segments)
    out = [piece for s in sentences for piece in _split(s, max_pause_ms, vad)]
    out.sort(key=lambda s: (s.start_ms, s.end_ms))
    return out


def split_at_pauses(sentence: Sentence, *, max_pause_ms: int, vad_segments: VadSegments = ()) -> list[Sentence]:
    """Cut one sentence wherever its tokens pause longer than ``max_pause_ms`` or fall into two
    VAD segments with non-speech between them; returns the pieces in time order.

    Each piece spans exactly its tokens (sorted by time) and keeps the sentence's speaker; a
    sentence that is not cut is re-spanned to its tokens too. Text: when every token is found in
    the sentence text in order, the text is cut between the tokens (punctuation stays with the
    word before it, opening brackets/quotes go with the word after); otherwise each piece's text
    is its tokens joined (``join_text``) and the last piece keeps the sentence-final marks. A
    piece that would hold only punctuation is glued to its neighbour (its time is not speech). A
    sentence without tokens is returned unchanged: there is nothing to split on.
    """
    return _split(sentence, max_pause_ms, _VadIndex(vad_segments))


def _split(sentence: Sentence, max_pause_ms: int, vad: _VadIndex) -> list[Sentence]:
    tokens = sentence.tokens
    if not tokens:
        return [sentence]
    order = sorted(range(len(tokens)), key=lambda i: (tokens[i].start_ms, tokens[i].end_ms, i))
    groups: list[list[int]] = [[order[0]]]
    reach = tokens[order[0]].end_ms
    for prev, i in itertools.pairwise(order):
        tok = tokens[i]
        if tok.start_ms - reach > max_pause_ms or vad.separated(_mid(tokens[prev]), _mid(tok)):
            groups.append([i])
        else:
            groups[-1].append(i)
        reach = max(reach, tok.end_ms)
    pieces: list[tuple[str, list[Token]]] = []
    for text, group in zip(_cut_text(sentence.text, tokens, groups), groups, strict=False):
        if pieces and _punct_only(text):
            pieces[-1] = (pieces[-1][0] + text.strip(), pieces[-1][1])
            continue
        pieces.append((text, [tokens[i] for i in group]))
    if len(pieces) > 1 and _punct_only(pieces[0][0]):
        marks, _ = pieces.pop(0)
        pieces[0] = (marks.strip() + pieces[0][0], pieces[0][1])
    return [
        replace(sentence, start_ms=toks[0].start_ms, end_ms=max(t.end_ms for t in toks), text=text, tokens=tuple(toks))
        for text, toks in pieces
    ]


def _punct_only(text: str) -> bool:
    return all(c in PUNCT or c.isspace() for c in text)


def _cut_text(text: str, tokens: Sequence[Token], groups: list[list[int]]) -> list[str]:
    """The sentence text for each group of token indices (see ``split_at_pauses``)."""
    if len(groups) == 1:
        return [text]
    spans = _locate(text, tokens)
    in_text_order = [i for g in groups for i in g] == list(range(len(tokens)))
    if spans is None or not in_text_order:
        tail = text.rstrip()
        marks = tail[len(tail.rstrip("".join(PUNCT))) :]
        texts = [join_text(tokens[i].text for i in g) for g in groups]
        texts[-1] += marks
        return texts
    cuts = [0]
    for g in groups[1:]:
        gap_from, gap_to = spans[g[0] - 1][1], spans[g[0]][0]
        between = text[gap_from:gap_to]
        space = re.search(r"\s", between)
        if space:
            cut = gap_from + space.start()
        else:  # no space (CJK): trailing opening marks go with the next piece
            cut = gap_to
            while cut > gap_from and text[cut - 1] in _OPENING:
                cut -= 1
        cuts.append(cut)
    cuts.append(len(text))
    return [text[a:b].strip() for a, b in itertools.pairwise(cuts)]


def _locate(text: str, tokens: Sequence[Token]) -> list[tuple[int, int]] | None:
    """Character span of each token in ``text``, searched in order; None when one is missing."""
    spans = []
    cursor = 0
    for tok in tokens:
        at = text.find(tok.text, cursor) if tok.text else cursor
        if at < 0:
            return None
        spans.append((at, at + len(tok.text)))
        cursor = at + len(tok.text)
    return spans


class _VadIndex:
    """VAD segments sorted; ``separated(a_ms, b_ms)``: do the segments holding a and b (the
    nearest segment when a time falls between two) have non-speech between them?"""

    def __init__(self, segments: VadSegments) -> None:
        segs = sorted((int(s), int(e)) for s, e in segments)
        self._starts = [s for s, _ in segs]
        self._ends = [e for _, e in segs]
        self._gaps_before = [0]  # gaps_before[k]: real gaps between segments 0..k
        for k in range(1, len(segs)):
            self._gaps_before.append(self._gaps_before[-1] + (segs[k][0] > segs[k - 1][1]))

    def _segment(self, ms: int) -> int:
        k = bisect.bisect_right(self._starts, ms) - 1
        if k < 0:
            return 0
        if ms > self._ends[k] and k + 1 < len(self._starts) and self._starts[k + 1] - ms < ms - self._ends[k]:
            return k + 1
        return k

    def separated(self, a_ms: int, b_ms: int) -> bool:
        if len(self._starts) < 2:
            return False
        a, b = sorted((self._segment(a_ms), self._segment(b_ms)))
        return self._gaps_before[b] > self._gaps_before[a]


def _mid(token: Token) -> int:
    return (token.start_ms + token.end_ms) // 2


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(value, max(low, high)))


def _first(stamps: Sequence[Any], default: int) -> int:
    return int(stamps[0][0]) if stamps and isinstance(stamps[0], (list, tuple)) else default


def _last(stamps: Sequence[Any], default: int) -> int:
    return int(stamps[-1][1]) if stamps and isinstance(stamps[-1], (list, tuple)) else default
