"""A reduce that always ends: whatever the summarizer answers, a job's levels are bounded
(`max_reduce_levels`, and no level that would not shrink), its final summary fits its
budget (cut at a sentence boundary), and `max_tokens` follows the budget."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentbus.contract.chunking import ELLIPSIS, cut_at_sentence, split_sentences
from agentbus.contract.messages import JobState
from agentbus_orchestrator import lifecycle
from agentbus_orchestrator.lifecycle import Completion, NextLevel, fit_summary
from agentbus_summarize_worker.backends.openai import fit, max_tokens_for

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PROPS = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
SENTENCE = st.builds(
    lambda words, mark: " ".join(words).capitalize() + mark,
    st.lists(st.sampled_from(["river", "the", "floods", "farmers", "rice", "in", "spring"]),
             min_size=1, max_size=30),
    st.sampled_from([".", "!", "?"]),
)  # fmt: skip
PROSE = st.lists(SENTENCE, min_size=1, max_size=40).map(" ".join)


def _job(chunks: int, *, summary_chars: int) -> JobState:
    return lifecycle.intake(
        job_id="job-1", title="t", skill="summarize", document_chars=chunks * 1000,
        summary_chars=summary_chars, chunks=chunks, now=T0, timeout_s=None,
        document_sha256=None, trace_id=None,
    )  # fmt: skip


# --- cut_at_sentence -----------------------------------------------------------------


def test_cut_keeps_whole_sentences_that_fit() -> None:
    text = "Rivers flood in spring. Farmers plant rice after. The water recedes in June."
    assert (
        cut_at_sentence(text, max_chars=50) == "Rivers flood in spring. Farmers plant rice after."
    )
    assert cut_at_sentence(text, max_chars=len(text)) == text
    assert cut_at_sentence("  short.  ", max_chars=6) == "short."


def test_cut_falls_back_to_a_word_boundary_when_sentences_keep_too_little() -> None:
    text = "Yes. " + "a very long second sentence without an end " * 5
    out = cut_at_sentence(text, max_chars=60)
    assert out.endswith(ELLIPSIS) and len(out) <= 60 and out.startswith("Yes. a very long")
    assert cut_at_sentence("x" * 100, max_chars=10) == "x" * 9 + ELLIPSIS


@PROPS
@given(text=PROSE, max_chars=st.integers(min_value=1, max_value=600))
def test_cut_holds_the_budget_and_ends_at_a_sentence_when_it_can(text: str, max_chars: int) -> None:
    out = cut_at_sentence(text, max_chars=max_chars)
    assert len(out) <= max_chars
    if len(text) <= max_chars:
        assert out == text
    elif not out.endswith(ELLIPSIS):
        assert text.startswith(out)  # whole sentences, as they were
        assert split_sentences(out) == split_sentences(text)[: len(split_sentences(out))]
        assert len(out) >= max_chars / 2


@PROPS
@given(text=st.text(max_size=800), max_chars=st.integers(min_value=1, max_value=300))
def test_cut_holds_the_budget_on_any_text(text: str, max_chars: int) -> None:
    assert len(cut_at_sentence(text, max_chars=max_chars)) <= max_chars


# --- fit_summary and plan_next ---------------------------------------------------------


def test_fit_summary_gives_each_part_its_share() -> None:
    parts = [f"Part {i} says one thing. Part {i} says another thing too." * 4 for i in range(3)]
    out = fit_summary(parts, max_chars=600)
    assert len(out) <= 600
    assert [p.split()[1] for p in out.split("\n\n")] == ["0", "1", "2"]  # every part is there


@PROPS
@given(parts=st.lists(PROSE, max_size=12), max_chars=st.integers(min_value=50, max_value=2000))
def test_fit_summary_holds_the_budget(parts: list[str], max_chars: int) -> None:
    out = fit_summary(parts, max_chars=max_chars)
    assert len(out) <= max_chars
    if any(p.strip() for p in parts):
        assert out


def test_a_single_part_over_budget_is_cut_not_sent_again() -> None:
    s = _job(1, summary_chars=100)
    plan = lifecycle.plan_next(
        s, ["A long answer. " * 20], chunk_chars=1000, chunk_summary_chars=200,
        max_reduce_levels=8,
    )  # fmt: skip
    assert isinstance(plan, Completion) and 50 <= len(plan.summary) <= 100


def test_the_last_reduce_level_completes_with_the_parts_cut() -> None:
    s = _job(30, summary_chars=300).model_copy(update={"level": 2})
    parts = ["Many words here. " * 10] * 30
    for levels in (0, 1, 2):
        plan = lifecycle.plan_next(
            s, parts, chunk_chars=1000, chunk_summary_chars=200, max_reduce_levels=levels
        )
        assert isinstance(plan, Completion) and len(plan.summary) <= 300
    more = lifecycle.plan_next(
        s, parts, chunk_chars=1000, chunk_summary_chars=200, max_reduce_levels=3
    )
    assert isinstance(more, NextLevel) and more.level == 3


def test_a_level_that_would_not_shrink_is_the_last() -> None:
    # parts at exactly half of chunk_chars: no two fit in one task with the separator
    s = _job(4, summary_chars=100)
    plan = lifecycle.plan_next(
        s, ["word " * 99 + "words"] * 4, chunk_chars=1000, chunk_summary_chars=500,
        max_reduce_levels=8,
    )  # fmt: skip
    assert isinstance(plan, Completion) and len(plan.summary) <= 100


@PROPS
@given(
    chunks=st.integers(min_value=1, max_value=400),
    answer=st.sampled_from(["short.", "An answer that is always far too long. " * 40]),
    max_reduce_levels=st.integers(min_value=0, max_value=8),
    summary_chars=st.integers(min_value=50, max_value=1500),
)
def test_any_summarizer_ends_within_the_level_bound_and_the_budget(
    chunks: int, answer: str, max_reduce_levels: int, summary_chars: int
) -> None:
    """A summarizer that answers `answer` to everything (cut to each task's budget, as the
    backends do): the job ends after at most `max_reduce_levels` reduce levels."""
    chunk_chars, chunk_summary_chars = 1200, 300
    state = _job(chunks, summary_chars=summary_chars)
    budget = summary_chars if chunks == 1 else chunk_summary_chars
    parts = [cut_at_sentence(answer, max_chars=budget)] * chunks
    while True:
        plan = lifecycle.plan_next(
            state, parts, chunk_chars=chunk_chars, chunk_summary_chars=chunk_summary_chars,
            max_reduce_levels=max_reduce_levels,
        )  # fmt: skip
        if isinstance(plan, Completion):
            assert len(plan.summary) <= summary_chars or chunks == 1
            break
        assert plan.level <= max_reduce_levels and len(plan.groups) < len(parts)
        state = state.model_copy(update={"level": plan.level})
        parts = [cut_at_sentence(answer, max_chars=plan.max_chars)] * len(plan.groups)


# --- the openai backend's budget ------------------------------------------------------


def test_max_tokens_follows_the_budget_within_the_cap() -> None:
    assert max_tokens_for(300, cap=2048) < max_tokens_for(3000, cap=2048)
    assert max_tokens_for(300_000, cap=512) == 512
    assert max_tokens_for(1, cap=2048) >= 1
    with pytest.raises(ValueError, match="max_chars"):
        max_tokens_for(0, cap=10)


def test_an_answer_over_budget_is_cut_after_a_sentence() -> None:
    answer = "<think>plan</think>The river floods. Farmers plant rice. " * 10
    assert fit(answer, max_chars=60) == "The river floods. Farmers plant rice. The river floods."
    assert fit("Fits.", max_chars=60) == "Fits."


# --- prompts ------------------------------------------------------------------------


def test_map_and_reduce_prompts_and_their_settings() -> None:
    from agentbus.contract.errors import ConfigError
    from agentbus.contract.settings import load_settings
    from agentbus_summarize_worker.backends.openai import prompt_messages

    system, user = prompt_messages("The text.", max_chars=700)
    assert system["role"] == "system" and user["role"] == "user"
    assert "in 100 words or fewer" in user["content"]
    assert user["content"].startswith("The text.")
    _, reduce = prompt_messages("A. B.", max_chars=70, reduce=True)
    assert "summaries of consecutive parts" in reduce["content"]
    custom = prompt_messages("T", max_chars=140, map_prompt="In {max_words} words: {text}")
    assert custom[1]["content"] == "In 20 words: T"
    s = load_settings(summarizer={"map_prompt": "Sum up {{briefly}}: {text}"})
    assert s.summarizer.map_prompt is not None
    for bad in ("no text here", "{text} {nope}", "{text} {"):
        with pytest.raises(ConfigError, match="AGENTBUS_SUMMARIZER__REDUCE_PROMPT"):
            load_settings(summarizer={"reduce_prompt": bad})


def test_answers_lose_labels_and_headings() -> None:
    from agentbus_summarize_worker.backends.openai import clean_answer

    assert clean_answer("The Living River: An Essay\n\nRivers flood.") == "Rivers flood."
    answer = "The summary is:\n\nPostmortem: outage on 14 March\n\nSummary: The API failed."
    assert clean_answer(answer) == "The API failed."
    assert clean_answer("**Summary:** Rivers flood.") == "Rivers flood."
    assert clean_answer("Rivers flood.\nFarmers plant.") == "Rivers flood.\nFarmers plant."
    assert clean_answer("A title alone") == "A title alone"


def test_answers_lose_the_prompt_they_echo() -> None:
    from agentbus_summarize_worker.backends.openai import REDUCE_PROMPT, clean_answer

    instruction = REDUCE_PROMPT.replace("{text}", "").replace("{max_words}", "50")
    answer = (
        "The checkout failed. Summarize the whole document in 50 words or fewer.\n\n"
        "It was fixed.\n\nThe text above is summaries of consecutive parts of one document."
    )
    assert clean_answer(answer, instruction=instruction) == "The checkout failed.\n\nIt was fixed."
    assert clean_answer("The Sea Rises Twice a Day:\n\nTides rise.") == "Tides rise."
