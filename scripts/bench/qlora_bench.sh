#!/usr/bin/env bash
# Builds if needed, then runs the QLoRA benchmark on CPU: `llmtune finetune model.quantize=nf4` next to
# transformers + peft + bitsandbytes (nf4, double quant, LoRA r16 on all linear layers), tokens/s and peak RSS
# for a 135M- and a 1.1B-shaped model, and the peak memory of loading an 8B-shaped base in 4 bits
# (see qlora_bench.py).
#   scripts/bench/qlora_bench.sh [--shapes 135m,1b] [--steps N] [--load-layers L | --skip-load]
#   About 20 minutes on 2 cores with the defaults, and ~8 GB of temporary disk for the load check.
#   LLMTUNE_BENCH_NO_BUILD=1   use the existing build/llmtune as is; LLMTUNE_BIN=PATH: that binary, no build
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$here/common.sh"
[[ -n "${LLMTUNE_BENCH_NO_BUILD:-}${LLMTUNE_BIN:-}" ]] || bash "$here/build.sh" --target llmtune >/dev/null
exec "$(llmtune_python)" "$here/bench/qlora_bench.py" "$@"
