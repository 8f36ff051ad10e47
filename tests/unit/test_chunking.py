"""Unit tests of `agentbus.chunking`: sentence splitting, chunking, packing, truncation."""

from __future__ import annotations

import math
import random
import time
from typing import Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentbus.contract.chunking import ELLIPSIS, chunk_text, pack, split_sentences, truncate

pytestmark = pytest.mark.unit

# --------------------------------------------------------------------------- strategies

_WORD_ALPHABET = st.characters(
    codec="utf-8", exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), exclude_characters="\x85"
)
_WORDS = st.text(_WORD_ALPHABET, min_size=1, max_size=12).filter(lambda w: not w.isspace())
_SEPARATORS = st.sampled_from([" ", " ", " ", "  ", "\n", "\n\n", "\t", " \n \n ", "\u00a0"])
_PUNCT_WORDS = st.sampled_from(
    [
        "Dr.",
        "e.g.",
        "U.S.",
        "3.14",
        "end.",
        "Why?",
        "No!",
        "...",
        "\u2026",
        '"Yes."',
        "(ok.)",
        "\u96e8\u3002\u98a8",
    ]
)


@st.composite
def documents(draw: st.DrawFn) -> str:
    """Texts mixing words, punctuation and every kind of whitespace."""
    words = draw(st.lists(st.one_of(_WORDS, _PUNCT_WORDS), max_size=60))
    pieces = [draw(_SEPARATORS) if draw(st.booleans()) else ""]
    for word in words:
        pieces.append(word)
        pieces.append(draw(_SEPARATORS))
    return "".join(pieces)


def _prose(sentence_count: int, *, seed: int, paragraph_every: int = 0) -> str:
    rng = random.Random(seed)
    vocabulary = "river tide harbour wool coal ship canal quay market bridge town trade".split()
    sentences = []
    for i in range(sentence_count):
        words = [rng.choice(vocabulary) for _ in range(rng.randint(4, 18))]
        sentence = " ".join(words).capitalize() + "."
        if paragraph_every and i and i % paragraph_every == 0:
            sentence = "\n\n" + sentence
        sentences.append(sentence)
    return " ".join(sentences)


# --------------------------------------------------------------------------- split_sentences


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("   \n\n\t ", []),
        ("One. Two. Three.", ["One.", "Two.", "Three."]),
        (
            "Dr. Smith met Mrs. Jones at St. Mary's. They talked.",
            ["Dr. Smith met Mrs. Jones at St. Mary's.", "They talked."],
        ),
        (
            "Bring tools, e.g. a hammer. Or not, i.e. nothing. Fine.",
            ["Bring tools, e.g. a hammer.", "Or not, i.e. nothing.", "Fine."],
        ),
        (
            "He moved to the U.S. in 1990. The U.S. Army hired him.",
            ["He moved to the U.S. in 1990.", "The U.S. Army hired him."],
        ),
        (
            "She lives in the U.S. The weather is mild.",
            ["She lives in the U.S.", "The weather is mild."],
        ),
        ("Pi is 3.14 roughly. It costs $2.50 now.", ["Pi is 3.14 roughly.", "It costs $2.50 now."]),
        ("Wait... what? So\u2026 We left.", ["Wait... what?", "So\u2026", "We left."]),
        ("It was\u2026 fine... mostly. Done.", ["It was\u2026 fine... mostly.", "Done."]),
        ("Really?! Yes!! Okay?", ["Really?!", "Yes!!", "Okay?"]),
        (
            '"Is it done?" she asked. "Yes." He left (quietly.) Then it rained.',
            ['"Is it done?" she asked.', '"Yes."', "He left (quietly.)", "Then it rained."],
        ),
        ("\u201cGo.\u201d \u201cNow?\u201d", ["\u201cGo.\u201d", "\u201cNow?\u201d"]),
        ("See Fig. 3 and No. 7 on p. 12 today.", ["See Fig. 3 and No. 7 on p. 12 today."]),
        ("John F. Kennedy spoke. He left.", ["John F. Kennedy spoke.", "He left."]),
        (
            "Acme Corp. makes rockets. Acme Inc. The end.",
            ["Acme Corp. makes rockets.", "Acme Inc.", "The end."],
        ),
        ("no punctuation at all here", ["no punctuation at all here"]),
        ("First paragraph\n\nSecond paragraph", ["First paragraph", "Second paragraph"]),
        ("Title\nBody text follows here.", ["Title", "Body text follows here."]),
        (
            "Steps:\n- install the package\n- run it\n* check output\n\u2022 done",
            ["Steps:", "- install the package", "- run it", "* check output", "\u2022 done"],
        ),
        (
            "1. First item here\n2. Second item\n3) Third item",
            ["1. First item here", "2. Second item", "3) Third item"],
        ),
        (
            "This line is a long hard-wrapped line of ordinary prose that\n"
            "continues here. Next one.",
            [
                "This line is a long hard-wrapped line of ordinary prose that\ncontinues here.",
                "Next one.",
            ],
        ),
        (
            "Ends mid-sentence, then\ncontinues lowercase.",
            ["Ends mid-sentence, then\ncontinues lowercase."],
        ),
        ("Windows line.\r\n\r\nNext paragraph.", ["Windows line.", "Next paragraph."]),
        ("It is 5 p.m. The shop closes.", ["It is 5 p.m.", "The shop closes."]),
        ("Version 2.0.1 shipped. Great.", ["Version 2.0.1 shipped.", "Great."]),
    ],
)
def test_split_sentences_cases(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_split_sentences_unicode() -> None:
    text = "Die Straße ist lang. Été arrive! Καλημέρα κόσμε. 今日は晴れです。 Ça va?"
    assert split_sentences(text) == [
        "Die Straße ist lang.",
        "Été arrive!",
        "Καλημέρα κόσμε.",
        "今日は晴れです。",
        "Ça va?",
    ]
    assert split_sentences("雨です。風です\uff01本当\uff1f「はい。」") == [
        "雨です。",
        "風です\uff01",
        "本当\uff1f",
        "「はい。」",
    ]


def test_split_sentences_keeps_order_and_all_words_of_prose() -> None:
    text = _prose(300, seed=7, paragraph_every=9)
    sentences = split_sentences(text)
    assert len(sentences) == 300
    assert all(s.endswith(".") and s[0].isupper() for s in sentences)
    assert " ".join(sentences).split() == text.split()


@settings(max_examples=300, deadline=None)
@given(documents())
def test_split_sentences_loses_no_words(text: str) -> None:
    sentences = split_sentences(text)
    assert all(s and s == s.strip() for s in sentences)
    assert "".join("".join(sentences).split()) == "".join(text.split())
    if not any(mark in text for mark in "\u3002\uff01\uff1f\uff61"):  # CJK stops need no space
        assert " ".join(sentences).split() == text.split()


# --------------------------------------------------------------------------- chunk_text


@pytest.mark.parametrize("max_chars", [0, -1, -100])
def test_chunk_text_rejects_bad_budget(max_chars: int) -> None:
    with pytest.raises(ValueError, match="max_chars"):
        chunk_text("some text", max_chars=max_chars)


def test_chunk_text_empty_and_blank() -> None:
    assert chunk_text("", max_chars=10) == []
    assert chunk_text(" \n\t\n ", max_chars=10) == []


def test_chunk_text_fitting_text_is_one_stripped_chunk() -> None:
    assert chunk_text("  Hello there.\n\nSecond.  \n", max_chars=100) == ["Hello there.\n\nSecond."]


def test_chunk_text_prefers_paragraph_boundaries() -> None:
    paragraphs = [f"Paragraph {i} " + "word " * 14 + "end." for i in range(12)]
    text = "\n\n".join(paragraphs)
    size = len(paragraphs[0])  # every paragraph has this length (single digits below 10)
    max_chars = size * 2 + 40
    chunks = chunk_text(text, max_chars=max_chars)
    assert all(len(c) <= max_chars for c in chunks)
    # every chunk is a run of whole paragraphs
    rebuilt = [p for chunk in chunks for p in chunk.split("\n\n")]
    assert rebuilt == paragraphs
    assert all(chunk.count("\n\n") == 1 for chunk in chunks)  # two per chunk: greedy


def test_chunk_text_splits_long_paragraph_at_sentences() -> None:
    text = _prose(200, seed=3)  # one paragraph
    chunks = chunk_text(text, max_chars=500)
    assert len(chunks) > 5
    assert all(len(c) <= 500 for c in chunks)
    assert all(c.endswith(".") for c in chunks)
    assert all(len(c) >= 250 for c in chunks[:-1])
    assert " ".join(chunks).split() == text.split()


def test_chunk_text_splits_long_sentence_at_whitespace() -> None:
    words = [f"w{i:04d}" for i in range(2000)]  # one sentence, no punctuation
    text = " ".join(words)
    chunks = chunk_text(text, max_chars=100)
    assert all(len(c) <= 100 for c in chunks)
    assert [w for c in chunks for w in c.split()] == words
    assert all(len(c) >= 95 for c in chunks[:-1])  # greedy: words are 5 chars


def test_chunk_text_hard_cuts_a_giant_word() -> None:
    word = "".join(chr(ord("a") + i % 26) for i in range(50_000))
    text = f"Start here. {word} and the end."
    chunks = chunk_text(text, max_chars=1000)
    assert chunks[0] == "Start here."
    assert chunks[-1].endswith("and the end.")
    assert all(0 < len(c) <= 1000 for c in chunks)
    assert "".join("".join(chunks).split()) == "".join(text.split())
    middle = chunks[1:-1]
    assert all(len(c) == 1000 for c in middle)


def test_chunk_text_single_character_budget() -> None:
    assert chunk_text("ab c", max_chars=1) == ["a", "b", "c"]


def test_chunk_text_reasonably_full_on_prose() -> None:
    text = _prose(3000, seed=11, paragraph_every=5)
    max_chars = 1200
    chunks = chunk_text(text, max_chars=max_chars)
    fill = sum(len(c) for c in chunks) / (len(chunks) * max_chars)
    assert fill > 0.75
    assert len(chunks) <= math.ceil(len(text) / (max_chars / 2))


MIB: Final = 1024 * 1024
LINEAR_RATIO_MAX: Final = 30.0
"""CPU time of a 10x larger input over that of the smaller one: linear work gives ~10,
quadratic ~100. 3x headroom for measurement noise."""


def _cpu_s(text: str, *, max_chars: int, repeat: int = 2) -> float:
    """The least process CPU time of `repeat` runs of `chunk_text` (CPU time, not wall time:
    other processes on the machine do not count towards it; the least of a few runs drops
    the noise of cache misses and context switches)."""
    best = math.inf
    for _ in range(repeat):
        started = time.process_time()
        chunk_text(text, max_chars=max_chars)
        best = min(best, time.process_time() - started)
    return best


def _prose_mib(mib: int) -> str:
    block = _prose(400, seed=5, paragraph_every=6) + "\n\n"
    return block * (mib * MIB // len(block) + 1)


def test_chunk_text_20_mib_is_linear() -> None:
    """20 MiB of prose is chunked with work linear in its size: its process CPU time is
    within `LINEAR_RATIO_MAX` times that of 2 MiB of the same prose (~10 when linear).
    A ratio of CPU times holds whatever else the machine runs, where a wall-time bound
    fails under load; a quadratic algorithm is far over (~100)."""
    text = _prose_mib(20)
    assert len(text) >= 20 * MIB
    chunks = chunk_text(text, max_chars=6000)
    assert all(0 < len(c) <= 6000 for c in chunks)
    assert sum(len(c) for c in chunks) > 0.95 * len(text) - 2 * len(chunks)
    small_s = _cpu_s(_prose_mib(2), max_chars=6000, repeat=5)
    large_s = _cpu_s(text, max_chars=6000, repeat=5)
    assert large_s < LINEAR_RATIO_MAX * small_s, (small_s, large_s)


def test_chunk_text_20_mib_without_whitespace_is_linear() -> None:
    """20 MiB without a single whitespace (no boundary anywhere: every chunk is a hard cut
    after the searches for a better cut fail) is cut into exactly ceil(n / max_chars) full
    chunks with work linear in its size: its process CPU time is within
    `LINEAR_RATIO_MAX` times that of 2 MiB (~10 when linear, ~100 if each cut searched
    to the end of the text). CPU time, as a ratio: no wall-time bound that load breaks."""
    text = "x" * (20 * MIB)
    chunks = chunk_text(text, max_chars=6000)
    assert "".join(chunks) == text
    assert len(chunks) == math.ceil(len(text) / 6000)
    assert all(len(c) == 6000 for c in chunks[:-1])
    small_s, large_s = _cpu_s("x" * (2 * MIB), max_chars=6000), _cpu_s(text, max_chars=6000)
    assert large_s < LINEAR_RATIO_MAX * small_s, (small_s, large_s)


@settings(max_examples=400, deadline=None)
@given(documents(), st.integers(min_value=1, max_value=80))
def test_chunk_text_properties(text: str, max_chars: int) -> None:
    chunks = chunk_text(text, max_chars=max_chars)
    assert all(0 < len(c) <= max_chars for c in chunks)
    assert all(c == c.strip() for c in chunks)
    # chunks are slices of the text, in order
    position = 0
    for chunk in chunks:
        found = text.find(chunk, position)
        assert found >= position
        position = found + len(chunk)
    # no character lost; no word lost unless a word exceeds the budget
    assert "".join("".join(chunks).split()) == "".join(text.split())
    if all(len(word) <= max_chars for word in text.split()):
        assert " ".join(chunks).split() == text.split()


# --------------------------------------------------------------------------- pack


def test_pack_rejects_bad_budget() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        pack(["a"], max_chars=0)


def test_pack_groups_greedily_in_order() -> None:
    parts = [f"part{i}-" + "x" * 4 for i in range(5)]  # 11 chars each
    groups = pack(parts, max_chars=25)
    assert groups == [
        f"{parts[0]}\n\n{parts[1]}",
        f"{parts[2]}\n\n{parts[3]}",
        parts[4],
    ]


def test_pack_custom_separator_and_empty_parts() -> None:
    assert pack(["a", "", "  ", "b", "c"], max_chars=5, separator=" | ") == ["a | b", "c"]
    assert pack([], max_chars=5) == []


def test_pack_splits_an_oversized_part() -> None:
    long_part = " ".join(["alpha beta gamma."] * 20)
    groups = pack(["intro", long_part, "outro"], max_chars=60)
    assert all(len(g) <= 60 for g in groups)
    assert groups[0] == "intro"
    assert groups[-1].endswith("outro")
    assert " ".join(groups).split() == ["intro", *long_part.split(), "outro"]


@settings(max_examples=200, deadline=None)
@given(st.lists(documents(), max_size=8), st.integers(min_value=1, max_value=120))
def test_pack_properties(parts: list[str], max_chars: int) -> None:
    groups = pack(parts, max_chars=max_chars)
    assert all(0 < len(g) <= max_chars for g in groups)
    assert "".join("".join(groups).split()) == "".join("".join(parts).split())


# --------------------------------------------------------------------------- truncate


def test_truncate_keeps_fitting_text_normalised() -> None:
    assert truncate("  a  b\n c ", max_chars=5) == "a b c"


def test_truncate_cuts_at_word_boundary() -> None:
    result = truncate("The quick brown fox jumps over the lazy dog", max_chars=20)
    assert result == "The quick brown fox" + ELLIPSIS
    assert len(result) <= 20


def test_truncate_drops_trailing_punctuation_before_ellipsis() -> None:
    assert truncate("Alpha, beta, gamma, delta", max_chars=14) == "Alpha, beta" + ELLIPSIS


@pytest.mark.parametrize("max_chars", range(1, 12))
def test_truncate_tiny_budgets(max_chars: int) -> None:
    result = truncate("Supercalifragilistic expialidocious", max_chars=max_chars)
    assert 0 < len(result) <= max_chars
    assert result.endswith(ELLIPSIS)
    assert "Supercalifragilistic".startswith(result[:-1])
