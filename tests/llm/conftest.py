"""The `llm` tier: a real llama.cpp server (one per test module, or the test's own) and a
recording proxy in front of it. Skips with the reason when the server or the model is not
installed (a failure in CI: `.ci/install-llm.sh` installs both)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.llm.proxy import RecordingProxy
from tests.llm.server import LlamaServer, missing


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    server = LlamaServer(log_path=tmp_path_factory.mktemp("llama") / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def proxy(llama: LlamaServer) -> AsyncIterator[RecordingProxy]:
    p = RecordingProxy(upstream=llama.url)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()
