"""Hostile text for the chunker: any characters (NUL, CR/LF, control and format
characters, RTL marks, combining marks, emoji), endless words, endless punctuation,
endless line breaks. Nothing raises, every budget holds, no character is lost, and the
pathological megabyte-sized inputs finish (the chunker is linear)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agentbus.contract.chunking import ELLIPSIS, chunk_text, pack, split_sentences, truncate

pytestmark = pytest.mark.unit

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

HOSTILE_CHARS = st.characters(codec="utf-8") | st.sampled_from(
    list("\x00\r\n\t\x0b\x0c\x1c\x85\u2028\u2029\u200b\u202e\ufeff\u0301.!?\u3002\u2026\"')")
)
HOSTILE_TEXT = st.text(HOSTILE_CHARS, max_size=3000) | st.builds(
    lambda unit, n: unit * n,
    st.sampled_from(["Dr. ", "e.g. ", "a", ".", "\n", "\r\n", " ", "x. ", "1. ", "\u3002", "?!"]),
    st.integers(0, 2000),
)
BUDGETS = st.integers(min_value=1, max_value=400)


def _visible(text: str) -> str:
    return "".join(text.split())


@FUZZ
@given(text=HOSTILE_TEXT, max_chars=BUDGETS)
@example(text="\x00" * 50, max_chars=7)
@example(text="a\r\n\r\nb", max_chars=1)
@example(text="\u2028" * 10 + "x", max_chars=2)
def test_chunk_text_holds_its_budget_and_loses_nothing(text: str, max_chars: int) -> None:
    chunks = chunk_text(text, max_chars=max_chars)
    for c in chunks:
        assert 0 < len(c) <= max_chars
        assert c == c.strip()
    assert _visible("".join(chunks)) == _visible(text)


@FUZZ
@given(text=HOSTILE_TEXT)
def test_split_sentences_keeps_every_character(text: str) -> None:
    sentences = split_sentences(text)
    assert all(s and s == s.strip() for s in sentences)
    assert _visible("".join(sentences)) == _visible(text)


@FUZZ
@given(parts=st.lists(HOSTILE_TEXT, max_size=8), max_chars=BUDGETS)
def test_pack_holds_its_budget(parts: list[str], max_chars: int) -> None:
    groups = pack(parts, max_chars=max_chars)
    assert all(0 < len(g) <= max_chars for g in groups)
    assert _visible("".join(groups)) == _visible("".join(parts))


@FUZZ
@given(text=HOSTILE_TEXT, max_chars=BUDGETS)
def test_truncate_holds_its_budget(text: str, max_chars: int) -> None:
    out = truncate(text, max_chars=max_chars)
    assert len(out) <= max_chars
    if len(" ".join(text.split())) <= max_chars:
        assert out == " ".join(text.split())
    else:
        assert out.endswith(ELLIPSIS)


@pytest.mark.parametrize("budget", [0, -1])
def test_bad_budget_is_a_value_error(budget: int) -> None:
    for call in (
        lambda: chunk_text("text", max_chars=budget),
        lambda: pack(["text"], max_chars=budget),
        lambda: truncate("text", max_chars=budget),
    ):
        with pytest.raises(ValueError, match="max_chars"):
            call()


MEGABYTE = 1_000_000


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a" * MEGABYTE, id="one-word"),
        pytest.param("." * MEGABYTE, id="periods"),
        pytest.param("\n" * MEGABYTE + "x", id="newlines"),
        pytest.param("Dr. " * (MEGABYTE // 4), id="abbreviations"),
        pytest.param("\x00" * MEGABYTE, id="nuls"),
        pytest.param("ab. " * (MEGABYTE // 4), id="short-sentences"),
        pytest.param(("x" * 60 + "\n") * (MEGABYTE // 61), id="wrapped-lines"),
        pytest.param("\u3002" * MEGABYTE, id="cjk-stops"),
    ],
)
def test_megabyte_pathological_inputs_finish(text: str) -> None:
    chunks = chunk_text(text, max_chars=6000)
    assert all(len(c) <= 6000 for c in chunks)
    assert sum(len(_visible(c)) for c in chunks) == len(_visible(text))
