#!/usr/bin/env bash
# Builds if needed, then runs the merge / GGUF export benchmark: `llmtune merge` next to
# transformers + peft merge_and_unload + save_pretrained (see merge_bench.py).
#   scripts/bench/merge_bench.sh [--shape 1b|demo] [--gguf-types q8_0,q4_k_m] [--keep]
#   LLMTUNE_BENCH_NO_BUILD=1   use the existing build/llmtune as is
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$here/common.sh"
[[ -n "${LLMTUNE_BENCH_NO_BUILD:-}" ]] || bash "$here/build.sh" --target llmtune >/dev/null
exec "$(llmtune_python)" "$here/bench/merge_bench.py" "$@"
