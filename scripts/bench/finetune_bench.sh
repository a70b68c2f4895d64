#!/usr/bin/env bash
# Builds if needed, then runs the LoRA fine-tuning benchmark: `llmtune finetune --json` and
# transformers + peft with the same settings, side by side (see finetune_bench.py).
#   scripts/bench/finetune_bench.sh [--device cpu|cuda] [--shape demo|1b] [--steps N] [--grad-checkpointing]
#   LLMTUNE_BENCH_NO_BUILD=1   use the existing build/llmtune as is
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$here/common.sh"
[[ -n "${LLMTUNE_BENCH_NO_BUILD:-}" ]] || bash "$here/build.sh" --target llmtune >/dev/null
exec "$(llmtune_python)" "$here/bench/finetune_bench.py" "$@"
