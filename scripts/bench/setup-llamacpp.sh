#!/usr/bin/env bash
# The reference server for serve_bench.py: llama-cpp-python[server] in a venv of its own
# (~/.cache/llmtune/bench-venv, or $LLAMACPP_VENV). PyPI has only its sdist, so pip compiles
# llama.cpp for this CPU: about 10 minutes on 2 cores. Not part of the test setup.
set -euo pipefail
venv=${LLAMACPP_VENV:-$HOME/.cache/llmtune/bench-venv}
version=${LLAMACPP_PYTHON_VERSION:-0.3.36}
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
if "$venv/bin/python" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$version')" 2>/dev/null; then
  echo "llama-cpp-python $version already in $venv"; exit 0
fi
CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$venv/bin/pip" install "llama-cpp-python[server]==$version"
echo "llama-cpp-python $version installed in $venv (LLAMACPP_PYTHON=$venv/bin/python)"
