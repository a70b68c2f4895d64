#!/usr/bin/env bash
# Builds if needed, then runs the prune benchmark: wall time and peak memory of wanda and sparsegpt
# at 50% on a TinyLlama-shaped random model (see prune_bench.py).
#   scripts/bench/prune_bench.sh [--samples 128] [--seq-len 512] [--methods wanda,sparsegpt] [--shape tinyllama|demo]
#   LLMTUNE_BENCH_NO_BUILD=1   use the existing build/llmtune as is
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$here/common.sh"
[[ -n "${LLMTUNE_BENCH_NO_BUILD:-}" ]] || bash "$here/build.sh" --target llmtune >/dev/null
exec "$(llmtune_python)" "$here/bench/prune_bench.py" "$@"
