#!/usr/bin/env bash
# Builds if needed, then runs the serving benchmark: `llmtune serve` next to llama.cpp's server
# (llama-cpp-python[server], see setup-llamacpp.sh) on the same GGUF file (see serve_bench.py).
#   scripts/bench/serve_bench.sh [--shape demo|135m|both] [--type q4_1] [--clients 1,8,32] [--keep]
#   LLMTUNE_BENCH_NO_BUILD=1   use the existing build/llmtune as is
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$here/common.sh"
[[ -n "${LLMTUNE_BENCH_NO_BUILD:-}" ]] || bash "$here/build.sh" --target llmtune >/dev/null
exec "$(llmtune_python)" "$here/bench/serve_bench.py" "$@"
