"""Sentence splitting, budgeted chunking and packing of plain text (pure functions, stdlib only).

- `split_sentences` cuts prose into sentences. It knows common abbreviations ("e.g.",
  "Dr.", "U.S."), decimals, ellipses, closing quotes and brackets after the terminal mark,
  "?!" runs, CJK full stops, bullet and numbered lines, headings and blank-line paragraph
  breaks, and hard-wrapped lines (joined back when a line clearly continues).
- `chunk_text` cuts a document into chunks of at most `max_chars` characters, preferring
  paragraph boundaries, then sentence boundaries, then whitespace, and as a last resort a
  hard cut inside an over-long "word". Chunks are slices of the input (inner whitespace is
  kept as it was), stripped and non-empty. It runs in linear time.
- `pack` groups consecutive parts (e.g. chunk summaries) into texts of at most `max_chars`
  for the reduce step.
- `truncate` shortens a text at a word boundary and marks the cut with an ellipsis.
- `cut_at_sentence` shortens a text to its whole sentences that fit (a model's answer
  over its budget), falling back to `truncate` when that would keep too little.

Words are never lost: for every word of at most `max_chars` characters,
`" ".join(chunk_text(t, max_chars=m)).split() == t.split()`; a longer word is cut into
`max_chars`-sized pieces (its characters stay, in order).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Final

__all__ = [
    "ELLIPSIS",
    "chunk_text",
    "cut_at_sentence",
    "pack",
    "split_sentences",
    "truncate",
]

ELLIPSIS: Final = "\u2026"
"""The mark `truncate` appends to a shortened text (one character)."""

_PARAGRAPH_MIN_FILL: Final = 0.5
"""A chunk ends at a paragraph break only if it is at least this full."""
_SENTENCE_MIN_FILL: Final = 0.5
"""A chunk ends at a sentence boundary only if it is at least this full."""
_LOOKAHEAD_CHARS: Final = 64
"""Characters read past a chunk's budget to decide whether a sentence ends there."""
_WRAPPED_LINE_MIN_CHARS: Final = 50
"""An unpunctuated line at least this long that is followed by a plain line is taken for
hard-wrapped prose (the sentence continues on the next line)."""
_PREV_TOKEN_WINDOW_CHARS: Final = 48
_CUT_MIN_FILL: Final = 0.5
"""`cut_at_sentence` keeps whole sentences only if they fill at least this much of the
budget; otherwise it cuts at a word boundary (one long sentence would leave almost nothing)."""

# Title-like abbreviations: a period after them never ends a sentence.
_NEVER_FINAL_ABBREVIATIONS: Final = frozenset(
    {
        "adm", "approx", "capt", "cf", "cmdr", "col", "cpl", "cpt", "dr", "e.g", "eg", "gen",
        "gov", "hon", "i.e", "ie", "lt", "maj", "messrs", "mme", "mlle", "mr", "mrs", "ms", "mssrs",
        "mt", "mx", "pres", "prof", "rep", "rev", "sen", "sgt", "supt", "viz", "vs", "w.r.t",
    }
)  # fmt: skip
# Abbreviations usually followed by a number ("No. 5", "p. 12", "Jan. 3").
_NUMERIC_ABBREVIATIONS: Final = frozenset(
    {
        "apr", "art", "aug", "ca", "ch", "dec", "eq", "eqs", "feb", "fig", "figs", "jan", "jul",
        "jun", "mar", "no", "nos", "nov", "oct", "op", "p", "para", "pp", "sec", "sep", "sept",
        "vol", "vols",
    }
)  # fmt: skip
# Abbreviations that may end a sentence: a period after them ends it only when the next
# word is a typical sentence opener ("... and Sons Ltd. The next day ...").
_MAYBE_FINAL_ABBREVIATIONS: Final = frozenset(
    {
        "a.m", "al", "ave", "bros", "co", "corp", "dept", "esq", "etc", "ft", "govt", "inc",
        "jr", "llc", "ltd", "ph.d", "plc", "p.m", "sr", "st",
    }
)  # fmt: skip
_SENTENCE_OPENERS: Final = frozenset(
    {
        "a", "after", "all", "also", "although", "an", "and", "as", "at", "because", "before",
        "both", "but", "by", "during", "each", "every", "finally", "first", "for", "from", "he",
        "her", "here", "his", "how", "however", "i", "if", "in", "it", "its", "later",
        "meanwhile", "most", "my", "next", "no", "nor", "not", "now", "of", "on", "once", "one",
        "or", "our", "she", "since", "so", "some", "still", "that", "the", "their", "then",
        "there", "these", "they", "this", "those", "thus", "to", "today", "two", "we", "what",
        "when", "where", "which", "while", "who", "why", "with", "yet", "you",
    }
)  # fmt: skip

_CLOSERS: Final = "\"'\u201d\u2019\u00bb)]}*_"
_OPENERS: Final = "\"'\u201c\u2018\u00ab([{\u00bf\u00a1*_"
_TERMINALS: Final = ".!?\u2026\u203d"

# A boundary candidate: a paragraph break, a line break, or a run of terminal marks
# (plus closing quotes/brackets) followed by whitespace or the end.
_CANDIDATE: Final = re.compile(
    r"(?P<para>\n(?:[^\S\n]*\n)+)"
    r"|(?P<line>\n)"
    rf"|(?P<term>[{re.escape(_TERMINALS)}]+)[{re.escape(_CLOSERS)}]*(?=\s|\Z)"
    r"|(?P<cjk>[\u3002\uff01\uff1f\uff61]+[\u300d\u300f\uff09\u3009\u300b\u201d\u2019]*)"
)
_NEXT_TOKEN: Final = re.compile(rf"\s*[{re.escape(_OPENERS)}]*(\S{{0,32}})")
_LEADING_WORD: Final = re.compile(r"\w+")
_NEXT_LINE: Final = re.compile(r"[^\S\n]*([^\n]{0,16})")
_BULLET: Final = re.compile(
    r"(?:[-*+\u2022\u2023\u25e6\u25aa\u25ab\u00b7\u2013\u2014>]|\d{1,3}[.)]|[A-Za-z][.)]|\(\w{1,3}\))"
    r"(?:\s|\Z)"
)
_BULLET_LABEL: Final = re.compile(r"\d{1,3}|[A-Za-z]|[ivxlcIVXLC]{1,6}")
_INITIALISM: Final = re.compile(r"(?:[a-z]\.)+[a-z]|[a-z]")
_ENDS_TERMINAL: Final = re.compile(rf"[{re.escape(_TERMINALS)}][{re.escape(_CLOSERS)}]*\Z")
_CONTINUATION_ENDINGS: Final = ",;-\u2013\u2014(&/+="

# `match` helpers that find the LAST occurrence inside [pos, endpos) in C: the greedy `.*`
# runs to the end and backs off one character at a time.
_LAST_PARAGRAPH_BREAK: Final = re.compile(r".*(\n[^\S\n]*\n)", re.DOTALL)
_LAST_WHITESPACE: Final = re.compile(r".*\s", re.DOTALL)
_WHITESPACE_RUN: Final = re.compile(r"\s*")


def _check_budget(max_chars: int) -> None:
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")


def _previous_token(text: str, end: int, floor: int) -> str:
    """The whitespace-delimited token that ends at `end`, without leading openers."""
    segment = text[max(floor, end - _PREV_TOKEN_WINDOW_CHARS) : end]
    if not segment or segment[-1].isspace():
        return ""
    parts = segment.rsplit(None, 1)
    return parts[-1].lstrip(_OPENERS)


def _at_line_start(text: str, index: int, floor: int) -> bool:
    """Whether only horizontal whitespace lies between the line's start and `index`."""
    i = index
    while i > floor and text[i - 1] != "\n" and text[i - 1].isspace():
        i -= 1
    return i == floor or text[i - 1] == "\n"


def _term_ends_sentence(text: str, match: re.Match[str], floor: int, endpos: int) -> bool:
    nxt = _NEXT_TOKEN.match(text, match.end(), endpos)
    next_token = nxt.group(1) if nxt else ""
    if not next_token:
        return True
    first = next_token[0]
    if first.islower() or first in ",;:.":
        return False
    if match.group("term") != ".":
        return True
    term_start = match.start("term")
    prev = _previous_token(text, term_start, floor)
    if not prev:
        return True
    low = prev.lower()
    if low in _NEVER_FINAL_ABBREVIATIONS:
        return False
    if low in _NUMERIC_ABBREVIATIONS and first.isdigit():
        return False
    if _BULLET_LABEL.fullmatch(prev) and _at_line_start(text, term_start - len(prev), floor):
        return False  # "1. First item", "b. Second item", "IV. Results"
    if low in _MAYBE_FINAL_ABBREVIATIONS or _INITIALISM.fullmatch(low):
        word = _LEADING_WORD.match(next_token)
        return word is not None and word.group(0).lower() in _SENTENCE_OPENERS
    return True


def _line_ends_sentence(text: str, newline: int, floor: int, endpos: int) -> bool:
    line_start = max(floor, text.rfind("\n", floor, newline) + 1)
    prev_line = text[line_start:newline].strip()
    if not prev_line:
        return True
    nxt = _NEXT_LINE.match(text, newline + 1, endpos)
    next_line = nxt.group(1).rstrip() if nxt else ""
    if not next_line:
        return True
    if _BULLET.match(next_line):
        return True
    if next_line[0].islower() or prev_line[-1] in _CONTINUATION_ENDINGS:
        return False
    if _ENDS_TERMINAL.search(prev_line):
        return False  # the terminal mark before this newline already decided
    return len(prev_line) < _WRAPPED_LINE_MIN_CHARS


def _boundaries(text: str, start: int, endpos: int, floor: int) -> list[int]:
    """Cut positions of sentence ends found in text[start:endpos], in order.

    A cut is an index where one sentence ends; the next begins after the whitespace there.
    `floor` bounds how far back context (the previous token or line) may be read.
    """
    cuts: list[int] = []
    for match in _CANDIDATE.finditer(text, start, endpos):
        kind = match.lastgroup
        if kind == "para":
            cuts.append(match.start())
        elif kind == "line":
            if _line_ends_sentence(text, match.start(), floor, endpos):
                cuts.append(match.start())
        elif kind == "cjk" or _term_ends_sentence(text, match, floor, endpos):
            # (CJK full stops end a sentence even without a space after them)
            cuts.append(match.end())
    return cuts


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences: stripped, non-empty, in their original order.

    Blank lines always end a sentence; so does a line break before a bullet or after a
    short unpunctuated line (a heading). Text without any punctuation is one sentence per
    line (or one sentence).
    """
    sentences: list[str] = []
    previous = 0
    for cut in [*_boundaries(text, 0, len(text), 0), len(text)]:
        sentence = text[previous:cut].strip()
        if sentence:
            sentences.append(sentence)
        previous = cut
    return sentences


def _skip_whitespace(text: str, pos: int) -> int:
    found = _WHITESPACE_RUN.match(text, pos)
    return found.end() if found is not None else pos


def _find_cut(text: str, pos: int, max_chars: int) -> int:
    """Where the chunk starting at `pos` (a non-space character) should end.

    Returns an index `cut` in (pos, pos + max_chars] so that text[pos:cut] is the chunk
    (before stripping) and text[cut] is whitespace, except for a hard cut.
    """
    limit = pos + max_chars
    paragraph_from = pos + max(1, math.ceil(max_chars * _PARAGRAPH_MIN_FILL))
    found = _LAST_PARAGRAPH_BREAK.match(text, paragraph_from, limit + 1)
    if found is not None:
        return found.start(1)
    sentence_from = pos + max(1, math.ceil(max_chars * _SENTENCE_MIN_FILL))
    endpos = min(len(text), limit + _LOOKAHEAD_CHARS)
    cuts = [
        c
        for c in _boundaries(text, sentence_from, endpos, pos)
        if c <= limit and (c == len(text) or text[c].isspace())  # never inside a "word"
    ]
    if cuts:
        return cuts[-1]
    found = _LAST_WHITESPACE.match(text, pos + 1, limit + 1)
    if found is not None:
        return found.end() - 1
    return limit  # one "word" longer than the budget: hard cut


def chunk_text(text: str, *, max_chars: int) -> list[str]:
    """Split a document into chunks of at most `max_chars` characters, in order.

    Each chunk is a stripped, non-empty slice of `text`. A chunk ends at the last paragraph
    break that leaves it at least half full, else at the last such sentence boundary, else
    at the last whitespace, else (a word longer than `max_chars`) at exactly `max_chars`.
    Linear in `len(text)`. Raises `ValueError` if `max_chars < 1`.
    """
    _check_budget(max_chars)
    end = len(text.rstrip())
    chunks: list[str] = []
    pos = _skip_whitespace(text, 0)
    while pos < end:
        if end - pos <= max_chars:
            chunks.append(text[pos:end])
            break
        cut = _find_cut(text, pos, max_chars)
        chunks.append(text[pos:cut].rstrip())
        pos = _skip_whitespace(text, cut)
    return chunks


def pack(parts: Sequence[str], *, max_chars: int, separator: str = "\n\n") -> list[str]:
    """Join consecutive parts with `separator` into groups of at most `max_chars` characters.

    Greedy and order-preserving: a part joins the current group while the group still fits.
    Parts are stripped and empty ones dropped; a part longer than `max_chars` is split with
    `chunk_text` first. Raises `ValueError` if `max_chars < 1`.
    """
    _check_budget(max_chars)
    pieces: list[str] = []
    for part in parts:
        stripped = part.strip()
        if len(stripped) > max_chars:
            pieces.extend(chunk_text(stripped, max_chars=max_chars))
        elif stripped:
            pieces.append(stripped)
    groups: list[str] = []
    current: list[str] = []
    current_chars = 0
    for piece in pieces:
        if current and current_chars + len(separator) + len(piece) <= max_chars:
            current.append(piece)
            current_chars += len(separator) + len(piece)
            continue
        if current:
            groups.append(separator.join(current))
        current = [piece]
        current_chars = len(piece)
    if current:
        groups.append(separator.join(current))
    return groups


def truncate(text: str, *, max_chars: int, ellipsis: str = ELLIPSIS) -> str:
    """Whitespace-normalise `text` and, if longer than `max_chars`, cut it at a word
    boundary and append `ellipsis`, all within `max_chars` characters.

    A first word longer than the budget is cut inside the word. Raises `ValueError` if
    `max_chars < 1`.
    """
    _check_budget(max_chars)
    normalized = " ".join(text.split())
    if len(normalized) <= max_chars:
        return normalized
    room = max_chars - len(ellipsis)
    if room <= 0:
        return ellipsis[:max_chars]
    body = normalized[:room]
    if normalized[room] != " ":
        space = body.rfind(" ")
        if space > 0:
            body = body[:space]
    trimmed = body.rstrip(" ,;:.-\u2013\u2014")
    return (trimmed or body) + ellipsis


def cut_at_sentence(text: str, *, max_chars: int) -> str:
    """`text` stripped and, if longer than `max_chars`, cut after its last sentence that
    ends within `max_chars` characters (the text before the cut is kept as it was).

    When the whole sentences that fit would fill less than half the budget (a long first
    sentence, or no sentence end at all), the text is cut at a word boundary with an
    ellipsis instead (`truncate`). The result is never longer than `max_chars`. Raises
    `ValueError` if `max_chars < 1`.
    """
    _check_budget(max_chars)
    stripped = text.strip()
    if len(stripped) <= max_chars:
        return stripped
    endpos = min(len(stripped), max_chars + _LOOKAHEAD_CHARS)
    floor = max(1, math.ceil(max_chars * _CUT_MIN_FILL))
    cuts = [
        c
        for c in _boundaries(stripped, 0, endpos, 0)
        if floor <= c <= max_chars and stripped[:c].strip()
    ]
    if cuts:
        return stripped[: cuts[-1]].rstrip()
    return truncate(stripped, max_chars=max_chars)
