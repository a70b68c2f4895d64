#!/usr/bin/env bash
# Builds if needed, then runs the LoRA fine-tuning benchmark: `llmtune finetune --json` next to
# transformers + peft on the same examples, packed the way transformers packs (DataCollatorWithFlattening:
# position_ids, no attention mask) and unpacked (padded batches), side by side (see finetune_bench.py).
#   scripts/bench/finetune_bench.sh [--device cpu|cuda] [--shape demo|135m|1b|8b] [--steps N]
#                                   [--reference packed,padded] [--grad-checkpointing] [--run-timeout S]
#   CPU:  --shape 135m (about 10 minutes on 2 cores with the defaults);  GPU: --device cuda --shape 1b|8b
#   LLMTUNE_BENCH_NO_BUILD=1   use the existing build/llmtune as is; LLMTUNE_BIN=PATH: that binary, no build
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$here/common.sh"
[[ -n "${LLMTUNE_BENCH_NO_BUILD:-}${LLMTUNE_BIN:-}" ]] || bash "$here/build.sh" --target llmtune >/dev/null
exec "$(llmtune_python)" "$here/bench/finetune_bench.py" "$@"
