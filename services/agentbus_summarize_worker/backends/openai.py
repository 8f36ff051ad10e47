"""A summarizer backend for any OpenAI-compatible `/v1/chat/completions` server
(vLLM, Ollama, llama.cpp's server, LocalAI, OpenAI itself), on the official `openai` SDK
(`AsyncOpenAI`): HTTP, timeouts, error types and streaming (SSE) are the SDK's.

One summary is one chat completion. Given a `DeltaSink` (a worker publishing live partial
results) and `stream` on (the default), the request streams (`stream: true`, usage in
the last chunk) and each token delta is passed on as it arrives; a stream that breaks
off is a transient failure.

Retries stay ours (the SDK's are off, `max_retries=0`), measured against what a work-queue
worker needs: the SDK honours a `Retry-After` of up to 60 s by sleeping in-process, which
holds a worker slot (and the task's ack deadline) that long, and its sleep cannot be
observed or bounded per task. Here transient failures (HTTP 429, 5xx, timeouts,
connection errors, a broken stream) are retried with exponential backoff and jitter,
honouring `Retry-After`; one longer than `openai_backoff_max_s` ends the attempt with a
retryable error instead, so the task goes back to JetStream with its own backoff. Any
other 4xx is a non-retryable error naming the status, the URL, the model and the
server's message.

The summary always fits the budget, and no request is wasted on a text that already
does: such a text is its own summary (no model call, no tokens). `max_tokens` is derived
from the budget (`max_tokens_for`), so a model that would write on and on is stopped near
it, and an answer still over the budget is cut after its last whole sentence that fits
(`cut_at_sentence`; at a word boundary when that would keep less than half).
Token usage from the response's `usage` is returned with the summary (the worker puts
it in the `task.completed` event and `agentbus_summarizer_tokens_total`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Final, NoReturn

import httpx2
import openai
from openai import AsyncOpenAI

from agentbus.contract.chunking import cut_at_sentence, split_sentences
from agentbus.contract.errors import ConfigError
from agentbus.contract.messages import TokenUsage
from agentbus.contract.settings import SummarizerSettings
from agentbus_summarize_worker.backends.base import DeltaSink, Summary
from agentbus_summarize_worker.errors import SummarizerError

__all__ = [
    "MAP_PROMPT",
    "REDUCE_PROMPT",
    "SYSTEM_PROMPT",
    "OpenAISummarizer",
    "clean_answer",
    "fit",
    "max_tokens_for",
    "max_words_for",
    "parse_retry_after",
    "prompt_messages",
]

log = logging.getLogger("summarize_worker.openai")

RETRYABLE_STATUS: Final = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
"""Statuses worth another try; every other 5xx is retried too."""
_CHARS_PER_TOKEN: Final = 3
"""A conservative characters-per-token ratio for deriving `max_tokens` from the budget."""
_MAX_TOKENS_MARGIN: Final = 16
_ERROR_BODY_CHARS: Final = 300
_THINK_BLOCK: Final = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_LEADING_LABEL: Final = re.compile(
    r"\A\s*(?:\*\*)?(?:(?:the |a )?summary(?: is)?|here is (?:a|the) summary[^\n:]{0,40})"
    r"\s*:(?:\*\*)?\s*",
    re.IGNORECASE,
)
_HEADING_MAX_CHARS: Final = 120
_TITLE_MAX_CHARS: Final = 80
"""A first line ending with a colon is a title up to this long ("The Sea Rises:")."""
_ECHO_MIN_CHARS: Final = 12
"""A sentence of an answer found in the instruction is an echo from this long."""
_KEY_SETTING: Final = "AGENTBUS_SUMMARIZER__OPENAI_API_KEY"
_KEY_FILE_SETTING: Final = "AGENTBUS_SUMMARIZER__OPENAI_API_KEY_FILE"

Sleep = Callable[[float], Awaitable[None]]


def max_tokens_for(max_chars: int, *, cap: int) -> int:
    """`max_tokens` of a request for a summary of at most `max_chars` characters: the
    budget in tokens at a conservative 3 characters per token, plus a margin for the
    end of a sentence, never above `cap` (`AGENTBUS_SUMMARIZER__OPENAI_MAX_TOKENS`)."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    return max(1, min(cap, max_chars // _CHARS_PER_TOKEN + _MAX_TOKENS_MARGIN))


SYSTEM_PROMPT: Final = (
    "You are a summarizer. You rewrite the text you are given as a shorter text that "
    "states its main facts. You reply with the summary only."
)
"""The system message of every request."""
MAP_PROMPT: Final = (
    "{text}\n\nSummarize the text above in {max_words} words or fewer. State its main "
    "facts in plain sentences."
)
"""The user message for one chunk of a document (`AGENTBUS_SUMMARIZER__MAP_PROMPT`).
Worded for small models too (tried on SmolLM2-135M-Instruct): the text first and the
instruction last, with a word budget (models count words, not characters). An
instruction placed before the text made the small model comment on the text ("The text
is written in a clear manner...") or answer with a label alone."""
REDUCE_PROMPT: Final = (
    "{text}\n\nThe text above is summaries of consecutive parts of one document. "
    "Summarize the whole document in {max_words} words or fewer. State its main facts in "
    "plain sentences."
)
"""The user message for a reduce step (`AGENTBUS_SUMMARIZER__REDUCE_PROMPT`)."""
_CHARS_PER_WORD: Final = 7
"""Characters per word (with its space and punctuation) when a budget is told in words:
on the high side, so that a model keeping to the word count stays within the budget."""


def max_words_for(max_chars: int) -> int:
    """The word budget told to a model for a summary of at most `max_chars` characters."""
    return max(3, max_chars // _CHARS_PER_WORD)


def prompt_messages(
    text: str,
    *,
    max_chars: int,
    reduce: bool = False,
    map_prompt: str = MAP_PROMPT,
    reduce_prompt: str = REDUCE_PROMPT,
) -> list[dict[str, str]]:
    """The chat messages asking for the summary of `text` within `max_chars`."""
    template = reduce_prompt if reduce else map_prompt
    user = template.format(text=text, max_words=max_words_for(max_chars), max_chars=max_chars)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _read_key_file(path: Path) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{_KEY_FILE_SETTING}={path}: cannot read: {e}") from e
    if not key:
        raise ConfigError(f"{_KEY_FILE_SETTING}={path}: the file is empty")
    return key


def _server_message(body: str) -> str:
    """The `error.message` of an OpenAI-style error body, else the body's start."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        data = json.loads(body)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:_ERROR_BODY_CHARS]
        if isinstance(error, str) and error:
            return error[:_ERROR_BODY_CHARS]
        if isinstance(data, dict) and data.get("detail"):
            return str(data["detail"])[:_ERROR_BODY_CHARS]
    text = " ".join(body.split())
    return text[:_ERROR_BODY_CHARS] or "(empty body)"


def _content(data: Any) -> tuple[str, str | None]:
    """(text, finish_reason) of the first choice of a chat completion."""
    if not isinstance(data, dict):
        raise ValueError("the response is not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("the response has no `choices`")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise ValueError("`choices[0].message` is missing")
    content = message.get("content")
    if isinstance(content, list):  # content parts
        content = "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise ValueError("`choices[0].message.content` is not text")
    finish = choices[0].get("finish_reason")
    return content, finish if isinstance(finish, str) else None


def _usage(data: Mapping[str, Any]) -> TokenUsage | None:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    try:
        return TokenUsage(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )
    except (TypeError, ValueError):
        return None


def fit(text: str, *, max_chars: int, instruction: str = "") -> str:
    """The model's answer, cleaned (`clean_answer`) and within `max_chars` (cut after its
    last whole sentence that fits)."""
    return cut_at_sentence(clean_answer(text, instruction=instruction), max_chars=max_chars)


def _heading(line: str) -> bool:
    """A title line: short, and without a sentence's end (a colon may end it)."""
    line = line.strip().strip("#*_ ")
    if not line or len(line) > _HEADING_MAX_CHARS:
        return False
    return line[-1] not in ".!?\u2026\"'" and (line[-1] != ":" or len(line) <= _TITLE_MAX_CHARS)


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def clean_answer(text: str, *, instruction: str = "") -> str:
    """A model's answer without what is not summary: a `<think>` block, a leading label
    ("Summary:"), leading heading lines (a short line without a sentence's end, followed
    by more text: small models often repeat the document's title first), and sentences
    that repeat the `instruction` (small models echo the prompt)."""
    cleaned = _LEADING_LABEL.sub("", _THINK_BLOCK.sub("", text)).strip()
    while "\n" in cleaned:
        first, rest = cleaned.split("\n", 1)
        if not rest.strip() or not _heading(first):
            break
        cleaned = _LEADING_LABEL.sub("", rest).strip()
    if instruction:
        said = _normal(instruction)
        for sentence in split_sentences(cleaned):
            if len(sentence) >= _ECHO_MIN_CHARS and _normal(sentence) in said:
                cleaned = cleaned.replace(sentence, "")
        cleaned = re.sub(r"[ \t]+\n", "\n", re.sub(r"[ \t]{2,}", " ", cleaned))
        cleaned = re.sub(r"\n\s*\n\s*\n+", "\n\n", cleaned).strip()
    return cleaned


class OpenAISummarizer:
    """Summaries from an OpenAI-compatible chat completions endpoint."""

    name: str = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        temperature: float = 0.2,
        max_tokens: int = 2048,
        map_prompt: str | None = None,
        reduce_prompt: str | None = None,
        stream: bool = True,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"AGENTBUS_SUMMARIZER__OPENAI_BASE_URL={base_url!r} is not an http(s) URL"
            )
        if not model:
            raise ConfigError("AGENTBUS_SUMMARIZER__OPENAI_MODEL is empty")
        self.base_url: Final = base_url.rstrip("/")
        self.url: Final = self.base_url + "/chat/completions"
        self.model: Final = model
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.map_prompt = map_prompt or MAP_PROMPT
        self.reduce_prompt = reduce_prompt or REDUCE_PROMPT
        self.stream = stream
        """Stream when the caller takes deltas (`AGENTBUS_SUMMARIZER__OPENAI_STREAM`)."""
        self._sleep = sleep
        self._random = random.Random()  # jitter, not security
        self._sdk: AsyncOpenAI | None = None
        self.requests = 0
        """HTTP requests sent (every try counts)."""

    @classmethod
    def from_settings(cls, settings: SummarizerSettings) -> OpenAISummarizer:
        """Build from settings; the API key comes from `openai_api_key_file` if set (a
        mounted Secret), else `openai_api_key`, else none (local servers need none).

        Raises `ConfigError` (naming the setting) for an unreadable key file, a base URL
        that is not http(s), or an empty model name."""
        key: str | None = None
        if settings.openai_api_key_file is not None:
            key = _read_key_file(settings.openai_api_key_file)
        elif settings.openai_api_key is not None:
            key = settings.openai_api_key.get_secret_value().strip() or None
        return cls(
            base_url=settings.openai_base_url,
            model=settings.openai_model,
            api_key=key,
            timeout_s=settings.openai_timeout_s,
            max_retries=settings.openai_max_retries,
            backoff_s=settings.openai_backoff_s,
            backoff_max_s=settings.openai_backoff_max_s,
            temperature=settings.openai_temperature,
            max_tokens=settings.openai_max_tokens,
            map_prompt=settings.map_prompt,
            reduce_prompt=settings.reduce_prompt,
            stream=settings.openai_stream,
        )

    def _client(self) -> AsyncOpenAI:
        if self._sdk is None:
            self._sdk = AsyncOpenAI(
                base_url=self.base_url,
                # never OPENAI_API_KEY from the environment: the key is ours to configure;
                # without one, each request omits the Authorization header (`_auth`)
                api_key=self._api_key or "unused",
                timeout=self.timeout_s,
                max_retries=0,  # ours: see the module docstring
            )
        return self._sdk

    def _request_body(
        self, text: str, max_chars: int, *, stream: bool, reduce: bool
    ) -> dict[str, Any]:
        max_tokens = max_tokens_for(max_chars, cap=self.max_tokens)
        messages = prompt_messages(
            text, max_chars=max_chars, reduce=reduce,
            map_prompt=self.map_prompt, reduce_prompt=self.reduce_prompt,
        )  # fmt: skip
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": max_tokens,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if not self._api_key:  # local servers need no key: send none
            body["extra_headers"] = {"Authorization": openai.Omit()}
        return body

    def _backoff(self, retry: int) -> float:
        """Exponential backoff with jitter for the `retry`-th retry (0-based)."""
        ceiling = min(self.backoff_max_s, self.backoff_s * float(2**retry))
        return ceiling * (0.5 + self._random.random() / 2)

    def _where(self) -> str:
        return f"{self.url} (model {self.model})"

    async def summarize(
        self, text: str, *, max_chars: int, on_delta: DeltaSink | None = None,
        reduce: bool = False,
    ) -> Summary:  # fmt: skip
        if max_chars < 1:
            raise ValueError(f"max_chars must be at least 1, got {max_chars}")
        text = text.strip()
        if len(text) <= max_chars:
            # already within its budget: its own summary, no model call
            return Summary(text=text)
        if not self.stream:
            on_delta = None
        body = self._request_body(text, max_chars, stream=on_delta is not None, reduce=reduce)
        retry = 0
        while True:
            try:
                if on_delta is None:
                    content, finish, usage = await self._complete(body)
                else:
                    content, finish, usage = await self._stream(body, on_delta, restart=retry > 0)
            except _EmptyStream as e:
                # A stream that ended before its first chunk: llama.cpp's server answers
                # a request it refuses (a prompt over the model's context) with an empty
                # 200 stream. Asked once more without streaming, the server says why (a
                # 4xx fails the task with the reason at once, never a retry loop), or
                # answers after all.
                log.warning("%s: %s; asking again without streaming", self._where(), e.reason)
                on_delta = None
                body = self._request_body(text, max_chars, stream=False, reduce=reduce)
                continue
            except _Transient as e:
                if retry >= self.max_retries:
                    raise SummarizerError(
                        f"{self._where()}: {e.reason}; gave up after {retry + 1} attempt(s)",
                        retryable=True,
                    ) from e
                delay = self._backoff(retry) if e.retry_after_s is None else e.retry_after_s
                if delay > self.backoff_max_s:
                    raise SummarizerError(
                        f"{self._where()}: {e.reason}; the server asks to retry after "
                        f"{delay:.0f}s (over AGENTBUS_SUMMARIZER__OPENAI_BACKOFF_MAX_S="
                        f"{self.backoff_max_s:g})",
                        retryable=True,
                    ) from e
                log.warning(
                    "%s: %s; retry %d/%d in %.2fs",
                    self._where(), e.reason, retry + 1, self.max_retries, delay,
                )  # fmt: skip
                retry += 1
                await self._sleep(delay)
                continue
            template = self.reduce_prompt if reduce else self.map_prompt
            instruction = template.format(
                text="", max_words=max_words_for(max_chars), max_chars=max_chars
            )
            summary = fit(content, max_chars=max_chars, instruction=instruction)
            if not summary:
                raise SummarizerError(
                    f"{self._where()}: the model returned an empty summary "
                    f"(finish_reason={finish})",
                    retryable=True,
                )
            return Summary(text=summary, usage=usage)

    async def _complete(self, body: dict[str, Any]) -> tuple[str, str | None, TokenUsage | None]:
        """One request without streaming: (content, finish_reason, usage)."""
        self.requests += 1
        with self._errors():
            raw = await self._client().chat.completions.with_raw_response.create(**body)
        text = raw.http_response.text
        try:
            data = json.loads(text)
        except ValueError as e:
            raise SummarizerError(
                f"{self._where()}: the response is not JSON: {_server_message(text)}",
                retryable=False,
            ) from e
        try:
            content, finish = _content(data)
        except ValueError as e:
            raise SummarizerError(
                f"{self._where()}: not an OpenAI-compatible chat completion: {e}",
                retryable=False,
            ) from e
        return content, finish, _usage(data)

    async def _stream(
        self, body: dict[str, Any], on_delta: DeltaSink, *, restart: bool
    ) -> tuple[str, str | None, TokenUsage | None]:
        """One streamed request, each delta passed to `on_delta` as it arrives."""
        self.requests += 1
        parts: list[str] = []
        chunks = 0
        finish: str | None = None
        usage: TokenUsage | None = None
        with self._errors():
            stream = await self._client().chat.completions.create(**body)
        with self._errors(streaming=True):
            async with stream:
                async for chunk in stream:
                    chunks += 1
                    if chunk.usage is not None:
                        usage = TokenUsage(
                            prompt_tokens=chunk.usage.prompt_tokens or 0,
                            completion_tokens=chunk.usage.completion_tokens or 0,
                        )
                    for choice in chunk.choices or ():
                        piece = choice.delta.content if choice.delta is not None else None
                        if piece:
                            parts.append(piece)
                            on_delta(piece, restart=restart and len(parts) == 1)
                        finish = choice.finish_reason or finish
        if finish is None and chunks == 0:
            raise _EmptyStream("the stream ended without a single chunk", None)
        if finish is None:
            raise _Transient("the stream ended before the model finished", None)
        return "".join(parts), finish, usage

    @contextlib.contextmanager
    def _errors(self, *, streaming: bool = False) -> Iterator[None]:
        """The SDK's and the transport's errors as `_Transient` or `SummarizerError`;
        `streaming`: while reading a stream that has begun."""
        broke = "the stream broke off: " if streaming else ""
        try:
            yield
        except openai.APITimeoutError as e:
            raise _Transient(f"{broke}no answer within {self.timeout_s:g}s", None) from e
        except openai.APIConnectionError as e:
            what = broke or "request failed: "
            raise _Transient(f"{what}{e.__cause__ or e}", None) from e
        except openai.APIStatusError as e:
            self._raise_status(e)
        except openai.APIError as e:  # an error event in the middle of a stream
            raise _Transient(f"the stream broke off: {e.message}", None) from e
        except httpx2.HTTPError as e:  # the connection dropped while streaming
            raise _Transient(f"the stream broke off: {e or type(e).__name__}", None) from e

    def _raise_status(self, e: openai.APIStatusError) -> NoReturn:
        status = e.status_code
        text = e.response.text
        retry_after = parse_retry_after(e.response.headers.get("Retry-After"))
        if status in RETRYABLE_STATUS or status >= 500:
            raise _Transient(f"HTTP {status}: {_server_message(text)}", retry_after) from e
        hint = ""
        if status in (401, 403):
            hint = f" (check {_KEY_SETTING} or {_KEY_FILE_SETTING})"
        elif status == 400 and "context" in text.lower():
            hint = (
                " (the task's text does not fit the model's context: lower "
                "AGENTBUS_ORCHESTRATOR__CHUNK_CHARS, or serve the model with a longer context)"
            )
        elif status == 404:
            hint = (
                " (check AGENTBUS_SUMMARIZER__OPENAI_BASE_URL and "
                "AGENTBUS_SUMMARIZER__OPENAI_MODEL)"
            )
        raise SummarizerError(
            f"{self._where()}: HTTP {status}: {_server_message(text)}{hint}", retryable=False
        ) from e

    async def aclose(self) -> None:
        if self._sdk is not None:
            await self._sdk.close()
            self._sdk = None


class _Transient(Exception):
    """A failure worth another try (429, 5xx, timeout, connection error)."""

    def __init__(self, reason: str, retry_after_s: float | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class _EmptyStream(_Transient):
    """A streamed answer without a single chunk (the server refused the request)."""
