"""The default summarizer backend: offline, deterministic extractive summaries.

The summary is made of the document's most central sentences, kept in their original
order and joined by single spaces:

1. the text is split into sentences (`agentbus.chunking.split_sentences`); bullet markers
   are dropped, and headings and fragments are kept out of the summary;
2. each sentence becomes a TF-IDF vector over lower-cased, stopword-filtered,
   suffix-stripped words (character bigrams for CJK runs);
3. sentences are scored by TextRank (weighted PageRank over the cosine-similarity graph)
   or, above `max_graph_sentences` sentences, by cosine similarity to the document
   centroid (linear instead of quadratic); the lead sentence and the first sentence of
   each paragraph get a small bonus, while short sentences, questions and sentences that
   open with a back-reference ("This", "However") get a small penalty;
4. sentences are taken best first (ties by position) while they fit the budget and are
   not near-duplicates of a sentence already taken.

If no sentence fits, the best one is cut at a word boundary and ends with "…". A text
that already fits is returned whitespace-normalised. Large texts are summarized in a
worker thread so the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from agentbus.contract.chunking import split_sentences, truncate
from agentbus_summarize_worker.backends.base import DeltaSink, Summary

__all__ = [
    "MAX_GRAPH_SENTENCES",
    "THREAD_THRESHOLD_CHARS",
    "ExtractiveSummarizer",
    "summarize_extractive",
]

THREAD_THRESHOLD_CHARS: Final = 20_000
"""Texts longer than this are summarized in a worker thread (`asyncio.to_thread`)."""
MAX_GRAPH_SENTENCES: Final = 400
"""Above this many sentences, centroid scoring replaces the O(n^2) similarity graph."""

_DAMPING: Final = 0.85
_MAX_ITERATIONS: Final = 100
_TOLERANCE: Final = 1e-8
_LEAD_BONUS: Final = 0.25
"""Relative score bonus of the first summary-worthy sentence (news-style lead)."""
_PARAGRAPH_START_BONUS: Final = 0.15
"""Relative score bonus of the first summary-worthy sentence of each paragraph."""
_DANGLING_FACTOR: Final = 0.8
_FULL_WEIGHT_TERMS: Final = 8
"""Sentences with fewer content words than this are scored down proportionally."""
_QUESTION_FACTOR: Final = 0.7
_REDUNDANCY_MAX_SIMILARITY: Final = 0.6
_MIN_CANDIDATE_WORDS: Final = 6
_MIN_UNTERMINATED_WORDS: Final = 8

_WORD: Final = re.compile(r"\w+")
_PARAGRAPH_BREAK: Final = re.compile(r"\n[^\S\n]*\n\s*")
_CJK: Final = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_BULLET_MARKER: Final = re.compile(
    r"^(?:[-*+\u2022\u2023\u25e6\u25aa\u25ab\u00b7\u2013\u2014>]|\d{1,3}[.)]|\(\w{1,3}\))\s+"
)
_TERMINATED: Final = re.compile(
    r"[.!?\u2026\u203d\u3002\uff01\uff1f\uff61][\"'\u201d\u2019\u00bb)\]}*_\u300d\u300f\uff09]*$"
)

_DANGLING_OPENERS: Final = frozenset(
    """
    also and because besides both but consequently furthermore hence however it its
    meanwhile moreover nevertheless nonetheless or otherwise she so such that them then
    therefore these they this those thus yet he his her
    """.split()
)
_STOPWORDS: Final = frozenset(
    """
    a about above across after again against all almost also although always am among an
    and another any anyone anything are around as at be became because become been before
    being below between both but by can cannot could did do does doing done down during each
    either else enough etc even ever every few for from further get gets getting got had has
    have having he her here hers herself him himself his how however i if in into is it its
    itself just least less let like made make makes many may me might more most much must my
    myself near neither never no nor not now of off often on once one only onto or other
    others otherwise our ours ourselves out over own per perhaps quite rather really same
    several shall she should since so some something sometimes still such than that the
    their theirs them themselves then there therefore these they this those though through
    thus to too toward towards under until up upon us very via was we well were what
    whatever when whenever where whether which while who whom whose why will with within
    without would yet you your yours yourself yourselves said says also ll re ve
    """.split()
)

# (suffix, replacement) pairs, longest first; one derivational suffix is stripped per word.
_SUFFIXES: Final = (
    ("ational", "ate"),
    ("ization", "ize"),
    ("isation", "ise"),
    ("fulness", "ful"),
    ("ousness", "ous"),
    ("iveness", "ive"),
    ("ations", "ate"),
    ("ation", "ate"),
    ("ingly", ""),
    ("ments", ""),
    ("ment", ""),
    ("ness", ""),
    ("edly", ""),
    ("ing", ""),
    ("ity", ""),
    ("ed", ""),
    ("ly", ""),
)
_MIN_STEM_CHARS: Final = 3
_VOWELS: Final = frozenset("aeiouy")


@lru_cache(maxsize=65_536)
def _stem(word: str) -> str:
    """A light suffix-stripping normalisation of one lower-case English word."""
    if len(word) <= _MIN_STEM_CHARS or not word.isascii() or not word.isalpha():
        return word
    if word.endswith("sses"):
        word = word[:-2]
    elif word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix, replacement in _SUFFIXES:
        if word.endswith(suffix):
            stem = word[: -len(suffix)]
            if len(stem) >= _MIN_STEM_CHARS and _VOWELS.intersection(stem):
                word = stem + replacement
                if suffix in ("ing", "ed", "ingly", "edly") and (
                    len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz"
                ):
                    word = word[:-1]  # running -> run, planned -> plan
            break
    if word.endswith("e") and len(word) > 4:
        word = word[:-1]  # create/created/creating -> creat
    return word


def _terms(sentence: str) -> list[str]:
    terms: list[str] = []
    for token in _WORD.findall(sentence.lower()):
        if _CJK.search(token):
            if len(token) == 1:
                terms.append(token)
            else:
                terms.extend(token[i : i + 2] for i in range(len(token) - 1))
            continue
        if len(token) < 2 or token in _STOPWORDS or token.startswith("_"):
            continue
        terms.append(_stem(token))
    return terms


@dataclass(slots=True)
class _Sentence:
    index: int
    text: str
    """Whitespace-normalised, without a bullet marker: the text the summary uses."""
    vector: dict[str, float]
    """L2-normalised TF-IDF weights."""
    content_terms: int
    candidate: bool
    """Whether the sentence may appear in a summary (not a heading or fragment)."""
    question: bool
    paragraph_start: bool
    """The first summary-worthy sentence of its paragraph (often its topic sentence)."""
    dangling: bool
    """Opens with a word that refers back ("This", "However"): reads poorly out of context."""


def _prepare(paragraphs: list[list[str]]) -> list[_Sentence]:
    sentences: list[_Sentence] = []
    term_lists: list[list[str]] = []
    for paragraph in paragraphs:
        paragraph_start = True
        for raw in paragraph:
            heading = raw.startswith("#")
            bullet = _BULLET_MARKER.match(raw) is not None
            text = _BULLET_MARKER.sub("", " ".join(raw.split()), count=1)
            if heading:
                text = text.lstrip("#").strip()
            if not text:
                continue
            words = len(text.split()) + len(_CJK.findall(text)) // 2  # CJK: ~2 chars a word
            terminated = _TERMINATED.search(text) is not None
            candidate = (
                not heading
                and words >= _MIN_CANDIDATE_WORDS
                and (
                    terminated
                    or (bullet and words >= _MIN_UNTERMINATED_WORDS)
                    or words >= 2 * _MIN_UNTERMINATED_WORDS
                )
            )
            terms = _terms(text)
            term_lists.append(terms)
            first_word = _WORD.match(text)
            sentences.append(
                _Sentence(
                    index=len(sentences),
                    text=text,
                    vector={},
                    content_terms=len(terms),
                    candidate=candidate,
                    question=text.rstrip("\"'\u201d\u2019)").endswith("?"),
                    paragraph_start=candidate and paragraph_start,
                    dangling=first_word is not None
                    and first_word.group(0).lower() in _DANGLING_OPENERS,
                )
            )
            if candidate:
                paragraph_start = False
    document_frequency: Counter[str] = Counter()
    for terms in term_lists:
        document_frequency.update(set(terms))
    count = len(sentences)
    idf = {t: math.log((count + 1) / (df + 1)) + 1.0 for t, df in document_frequency.items()}
    for sentence, terms in zip(sentences, term_lists, strict=True):
        weights = {t: (1.0 + math.log(tf)) * idf[t] for t, tf in Counter(terms).items()}
        norm = math.sqrt(sum(w * w for w in weights.values()))
        if norm > 0:
            sentence.vector = {t: w / norm for t, w in weights.items()}
    return sentences


def _cosine(a: dict[str, float], b: dict[str, float]) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(w * b.get(t, 0.0) for t, w in a.items())


def _textrank(sentences: list[_Sentence]) -> list[float]:
    """Weighted PageRank over the cosine-similarity graph of the sentences."""
    n = len(sentences)
    similarity = [[0.0] * n for _ in range(n)]
    postings: dict[str, list[tuple[int, float]]] = {}
    for sentence in sentences:
        for term, weight in sentence.vector.items():
            postings.setdefault(term, []).append((sentence.index, weight))
    for posting in postings.values():
        for a, (i, wi) in enumerate(posting):
            row = similarity[i]
            for j, wj in posting[a + 1 :]:
                row[j] += wi * wj
    for i in range(n):  # mirror the upper triangle
        for j in range(i + 1, n):
            similarity[j][i] = similarity[i][j]
    out_weight = [sum(row) for row in similarity]
    incoming: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for j, row in enumerate(similarity):
        if out_weight[j] > 0:
            for i, sim in enumerate(row):
                if sim > 0:
                    incoming[i].append((j, sim / out_weight[j]))
    dangling = [j for j in range(n) if out_weight[j] == 0]
    scores = [1.0 / n] * n
    for _ in range(_MAX_ITERATIONS):
        leaked = _DAMPING * sum(scores[j] for j in dangling) / n
        base = (1.0 - _DAMPING) / n + leaked
        updated = [base + _DAMPING * sum(scores[j] * w for j, w in edges) for edges in incoming]
        delta = max(abs(u - s) for u, s in zip(updated, scores, strict=True))
        scores = updated
        if delta < _TOLERANCE:
            break
    return scores


def _centroid_scores(sentences: list[_Sentence]) -> list[float]:
    """Cosine similarity of each sentence to the document's centroid (linear time)."""
    centroid: dict[str, float] = {}
    for sentence in sentences:
        for term, weight in sentence.vector.items():
            centroid[term] = centroid.get(term, 0.0) + weight
    norm = math.sqrt(sum(w * w for w in centroid.values())) or 1.0
    return [_cosine(s.vector, centroid) / norm for s in sentences]


def _select(sentences: list[_Sentence], scores: list[float], max_chars: int) -> str:
    ranked = sorted(
        (s for s in sentences if s.candidate), key=lambda s: (-scores[s.index], s.index)
    )
    if not ranked:  # only headings and fragments: rank them all
        ranked = sorted(sentences, key=lambda s: (-scores[s.index], s.index))
    chosen: list[_Sentence] = []
    used_chars = 0
    for sentence in ranked:
        cost = len(sentence.text) + (1 if chosen else 0)
        if used_chars + cost > max_chars:
            continue
        if any(_cosine(sentence.vector, c.vector) > _REDUNDANCY_MAX_SIMILARITY for c in chosen):
            continue
        chosen.append(sentence)
        used_chars += cost
    if not chosen:
        return truncate(ranked[0].text, max_chars=max_chars)
    chosen.sort(key=lambda s: s.index)
    return " ".join(s.text for s in chosen)


def summarize_extractive(
    text: str, *, max_chars: int, max_graph_sentences: int = MAX_GRAPH_SENTENCES
) -> str:
    """Extractive summary of `text` in at most `max_chars` characters (synchronous).

    Deterministic; never empty for a text with any non-space character. Raises
    `ValueError` if `max_chars < 1`.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    normalized = " ".join(text.split())
    if len(normalized) <= max_chars:
        return normalized
    paragraphs = [split_sentences(p) for p in _PARAGRAPH_BREAK.split(text)]
    sentences = _prepare(paragraphs)
    if not sentences:
        return truncate(normalized, max_chars=max_chars)
    if len(sentences) <= max_graph_sentences:
        scores = _textrank(sentences)
    else:
        scores = _centroid_scores(sentences)
    lead_seen = False
    for sentence in sentences:
        factor = min(1.0, sentence.content_terms / _FULL_WEIGHT_TERMS)
        if sentence.candidate and not lead_seen:
            factor *= 1.0 + _LEAD_BONUS
            lead_seen = True
        elif sentence.paragraph_start:
            factor *= 1.0 + _PARAGRAPH_START_BONUS
        if sentence.dangling:
            factor *= _DANGLING_FACTOR
        if sentence.question:
            factor *= _QUESTION_FACTOR
        scores[sentence.index] *= factor
    return _select(sentences, scores, max_chars)


class ExtractiveSummarizer:
    """Offline, deterministic extractive summarizer (the default backend)."""

    name: str = "extractive"

    def __init__(
        self,
        *,
        thread_threshold_chars: int = THREAD_THRESHOLD_CHARS,
        max_graph_sentences: int = MAX_GRAPH_SENTENCES,
    ) -> None:
        if thread_threshold_chars < 0:
            raise ValueError(f"thread_threshold_chars must be >= 0, got {thread_threshold_chars}")
        if max_graph_sentences < 1:
            raise ValueError(f"max_graph_sentences must be >= 1, got {max_graph_sentences}")
        self._thread_threshold_chars = thread_threshold_chars
        self._max_graph_sentences = max_graph_sentences

    async def summarize(
        self, text: str, *, max_chars: int, on_delta: DeltaSink | None = None,
        reduce: bool = False,
    ) -> Summary:  # fmt: skip
        if max_chars < 1:
            raise ValueError(f"max_chars must be at least 1, got {max_chars}")
        if len(text) > self._thread_threshold_chars:
            summary = await asyncio.to_thread(
                summarize_extractive,
                text,
                max_chars=max_chars,
                max_graph_sentences=self._max_graph_sentences,
            )
        else:
            summary = summarize_extractive(
                text, max_chars=max_chars, max_graph_sentences=self._max_graph_sentences
            )
        return Summary(text=summary)

    async def aclose(self) -> None:
        return None
