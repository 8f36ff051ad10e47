"""Synthetic documents for end-to-end tests: prose-like sentences in paragraphs, of any
length, reproducible from a seeded `random.Random`."""

from __future__ import annotations

import random

WORDS = (
    "river delta harbor tide current sediment estuary marsh channel levee flood drought "
    "farmer village market bridge ferry boat salt fresh water season spring autumn storm"
).split()


def make_document(rng: random.Random, sentences: int) -> str:
    """`sentences` sentences of 6-18 words, a paragraph break every seven."""
    out = []
    for i in range(sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 18))]
        out.append(" ".join(words).capitalize() + ".")
        if i % 7 == 6:
            out.append("\n\n")
    return " ".join(out)


def prose_document(seed: int, chars: int) -> str:
    """About `chars` characters (at least that many) of prose from `make_document`,
    built in pieces so that megabytes stay quick to make."""
    rng = random.Random(seed)
    pieces: list[str] = []
    total = 0
    while total < chars:
        piece = make_document(rng, 700)
        pieces.append(piece)
        total += len(piece) + 2
    return "\n\n".join(pieces)


def single_word(chars: int) -> str:
    """One "word" of `chars` letters: no space, no sentence end, nothing to split on."""
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    return (alphabet * (chars // len(alphabet) + 1))[:chars]
