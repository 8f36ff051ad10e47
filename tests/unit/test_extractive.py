"""Unit tests of the extractive summarizer backend."""

from __future__ import annotations

import asyncio
import math
import random
import time
from pathlib import Path

import pytest

from agentbus.contract.chunking import ELLIPSIS
from agentbus_summarize_worker.backends import (
    ExtractiveSummarizer,
    Summarizer,
    summarize_extractive,
)
from agentbus_summarize_worker.backends.base import Summary

pytestmark = pytest.mark.unit

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "samples"

TOPIC_SENTENCES = [
    "Solar panels convert sunlight into electricity for homes and businesses.",
    "Modern solar panels turn more of the sunlight they get into electricity than older panels.",
    "Homes with solar panels can sell surplus electricity back to the grid.",
    "Batteries store electricity from solar panels for use after sunset.",
    "The price of solar panels has fallen, so more homes now generate their own electricity.",
]
FILLER_SENTENCES = [
    "My neighbour's cat sleeps on the warm garden wall every afternoon.",
    "The bakery on the corner sells rye bread with caraway seeds.",
    "A marching band rehearsed loudly in the park on Tuesday evening.",
    "Grandmother knitted a purple scarf during the long winter holidays.",
    "The football match was postponed because the pitch was frozen.",
]


def _crafted_text() -> str:
    # filler first, so that position alone cannot explain the choice
    order = [
        FILLER_SENTENCES[0],
        TOPIC_SENTENCES[0],
        FILLER_SENTENCES[1],
        TOPIC_SENTENCES[1],
        TOPIC_SENTENCES[2],
        FILLER_SENTENCES[2],
        TOPIC_SENTENCES[3],
        FILLER_SENTENCES[3],
        TOPIC_SENTENCES[4],
        FILLER_SENTENCES[4],
    ]
    return " ".join(order[:5]) + "\n\n" + " ".join(order[5:])


def _sample_texts() -> list[str]:
    paths = sorted(SAMPLES_DIR.glob("*.txt"))
    assert len(paths) >= 5
    return [p.read_text(encoding="utf-8") for p in paths]


def _normalized(text: str) -> str:
    return " ".join(text.split())


def test_picks_central_sentences_not_filler() -> None:
    text = _crafted_text()
    summary = summarize_extractive(text, max_chars=250)
    assert len(summary) <= 250
    chosen = [s for s in TOPIC_SENTENCES if s in summary]
    assert len(chosen) >= 2
    assert not any(f in summary for f in FILLER_SENTENCES)
    # nothing but whole topic sentences, joined by single spaces
    assert summary == " ".join(chosen)


def test_keeps_original_order() -> None:
    text = _crafted_text()
    summary = summarize_extractive(text, max_chars=400)
    positions = [text.index(s) for s in TOPIC_SENTENCES if s in summary]
    assert len(positions) >= 3
    assert positions == sorted(positions)
    assert summary == " ".join(s for s in TOPIC_SENTENCES if s in summary)


def test_text_that_fits_is_returned_whitespace_normalised() -> None:
    text = "  Short   text.\n\nIt fits   easily.\t"
    assert summarize_extractive(text, max_chars=100) == "Short text. It fits easily."


@pytest.mark.parametrize("max_chars", [*range(1, 41), 50, 64, 80, 120, 200, 333, 600, 1000])
def test_budget_is_respected(max_chars: int) -> None:
    for text in [_crafted_text(), *_sample_texts()]:
        summary = summarize_extractive(text, max_chars=max_chars)
        assert 0 < len(summary) <= max_chars


def test_summaries_of_samples_are_whole_sentences_of_the_text() -> None:
    for text in _sample_texts():
        summary = summarize_extractive(text, max_chars=600)
        assert 200 < len(summary) <= 600
        assert not summary.endswith(ELLIPSIS)
        assert summary[-1] in ".!?"
        normalized = _normalized(text)
        # each picked sentence is in the document, in order
        position = 0
        for sentence in summary.replace(". ", ".\n").splitlines():
            found = normalized.find(sentence, position)
            assert found >= 0, sentence
            position = found + len(sentence)


def test_too_long_best_sentence_is_truncated_at_a_word() -> None:
    text = (
        "The committee reviewed every proposal for the new harbour bridge carefully "
        "and at great length before deciding to fund the design with the lowest cost. "
        "Short one."
    )
    summary = summarize_extractive(text, max_chars=60)
    assert len(summary) <= 60
    assert summary.endswith(ELLIPSIS)
    body = summary[: -len(ELLIPSIS)]
    assert text.startswith(body)
    assert text[len(body)] == " "  # cut at a word boundary


def test_tiny_budget_never_empty() -> None:
    assert summarize_extractive("Hello world. Again here.", max_chars=1) == ELLIPSIS
    assert len(summarize_extractive("Hello world. Again here.", max_chars=2)) == 2


def test_rejects_bad_budget() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        summarize_extractive("Some text.", max_chars=0)


def test_blank_text_gives_blank_summary() -> None:
    assert summarize_extractive("  \n\t ", max_chars=50) == ""


def test_deterministic() -> None:
    texts = [_crafted_text(), *_sample_texts()]
    first = [summarize_extractive(t, max_chars=300) for t in texts]
    second = [summarize_extractive(t, max_chars=300) for t in texts]
    assert first == second


def test_ties_are_broken_by_position() -> None:
    # identical sentences score the same; the earliest copy wins, duplicates are dropped
    sentence = "Rivers carry sediment from the mountains down to the sea."
    text = " ".join([sentence] * 6)
    assert summarize_extractive(text, max_chars=len(sentence) * 3) == sentence


def test_headings_and_bullet_markers_are_not_copied() -> None:
    text = (
        "# Quarterly Report On Harbour Operations\n\n"
        "Harbour traffic grew by twelve percent this quarter as grain exports recovered.\n"
        "- Grain exports through the harbour doubled after the new silo opened.\n"
        "- Harbour fees were kept flat to keep grain exports competitive.\n"
        "Notes\n\n"
        "The cafeteria menu will change next month to include soup.\n"
    )
    summary = summarize_extractive(text, max_chars=160)
    assert "#" not in summary
    assert "Quarterly Report" not in summary
    assert "- " not in summary
    assert "Notes" not in summary
    assert "grain exports" in summary


def test_unicode_text() -> None:
    text = (
        "Die Gezeiten entstehen durch die Anziehungskraft des Mondes auf die Ozeane. "
        "Der Mond zieht die Ozeane auf der ihm zugewandten Seite stärker an. "
        "Mein Onkel fährt gern Fahrrad am Wochenende. "
        "Springfluten entstehen, wenn Sonne und Mond die Ozeane gemeinsam anziehen. "
        "月の引力が海の潮の満ち引きを起こします。 "
        "Café, crème brûlée — déjà vu! "
        "Ἡ θάλασσα κινεῖται δύο φορὲς τὴν ἡμέρα."
    )
    summary = summarize_extractive(text, max_chars=160)
    assert 0 < len(summary) <= 160
    assert "Ozeane" in summary
    assert "Fahrrad" not in summary
    for max_chars in (10, 40, 80):
        assert 0 < len(summarize_extractive(text, max_chars=max_chars)) <= max_chars


def test_cjk_only_text() -> None:
    text = (
        "河川は山から海へ土砂を運びます。" * 3
        + "東京の天気は晴れです。"
        + "河川の生態系は土砂に依存します。" * 2
    )
    summary = summarize_extractive(text, max_chars=40)
    assert 0 < len(summary) <= 40


def test_text_without_punctuation() -> None:
    rng = random.Random(3)
    words = "river bank flood channel gravel salmon beaver wood".split()
    text = " ".join(rng.choice(words) for _ in range(2000))
    summary = summarize_extractive(text, max_chars=120)
    assert 0 < len(summary) <= 120
    assert summary.endswith(ELLIPSIS)
    assert _normalized(text).startswith(summary[: -len(ELLIPSIS)])


def test_lines_without_punctuation() -> None:
    lines = [
        "river restoration reconnects floodplains and channels",
        "beaver dams slow floods and store water in valleys",
        "my favourite colour is green",
        "river floodplains store floodwater and sediment",
    ]
    summary = summarize_extractive("\n".join(lines), max_chars=110)
    assert 0 < len(summary) <= 110
    assert "colour" not in summary


def _cpu_s(text: str, *, max_chars: int, repeat: int = 2) -> float:
    """The least process CPU time of `repeat` runs (CPU, not wall time: other processes on
    the machine do not count towards it)."""
    best = math.inf
    for _ in range(repeat):
        started = time.process_time()
        summarize_extractive(text, max_chars=max_chars)
        best = min(best, time.process_time() - started)
    return best


def test_one_megabyte_input_takes_work_linear_in_its_size() -> None:
    """1 MB is summarized with work (near) linear in its size: its process CPU time is
    within 30x that of 100 kB of the same corpus (~10 when linear, ~100 if quadratic).
    A ratio of CPU times holds whatever else the machine runs; a wall-time bound did not."""
    corpus = "\n\n".join(_sample_texts())

    def sized(chars: int) -> str:
        return "\n\n".join([corpus] * (chars // len(corpus) + 1))

    big = sized(1_000_000)
    assert len(big) >= 1_000_000
    summary = summarize_extractive(big, max_chars=600)
    assert 0 < len(summary) <= 600
    small_s, large_s = _cpu_s(sized(100_000), max_chars=600), _cpu_s(big, max_chars=600)
    assert large_s < 30 * small_s, (small_s, large_s)
    sentences = summary.replace(". ", ".\n").splitlines()
    assert len(sentences) == len(set(sentences))  # repeated copies are not picked twice


def test_graph_and_centroid_scoring_agree_on_crafted_text() -> None:
    text = _crafted_text()
    graph = summarize_extractive(text, max_chars=250)
    centroid = summarize_extractive(text, max_chars=250, max_graph_sentences=1)
    assert not any(f in centroid for f in FILLER_SENTENCES)
    assert graph and centroid


async def test_async_summarize_returns_summary() -> None:
    summarizer: Summarizer = ExtractiveSummarizer()
    assert summarizer.name == "extractive"
    result = await summarizer.summarize(_crafted_text(), max_chars=250)
    assert isinstance(result, Summary)
    assert result.usage is None
    assert result.text == summarize_extractive(_crafted_text(), max_chars=250)
    await summarizer.aclose()


async def test_async_summarize_rejects_bad_budget() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        await ExtractiveSummarizer().summarize("text", max_chars=0)


async def test_large_text_does_not_block_the_event_loop() -> None:
    corpus = "\n\n".join(_sample_texts())
    big = "\n\n".join([corpus] * (1_000_000 // len(corpus) + 1))
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    summary = await ExtractiveSummarizer().summarize(big, max_chars=600)
    stop.set()
    await task
    assert 0 < len(summary.text) <= 600
    assert ticks >= 5


def test_constructor_validates_options() -> None:
    with pytest.raises(ValueError, match="thread_threshold_chars"):
        ExtractiveSummarizer(thread_threshold_chars=-1)
    with pytest.raises(ValueError, match="max_graph_sentences"):
        ExtractiveSummarizer(max_graph_sentences=0)
