#!/usr/bin/env bash
# The first command on a fresh machine: installs what is missing, builds llmtune, then runs the
# main job on the bundled tiny model (demo/): evaluates it on the demo's held-out instructions,
# fine-tunes it with LoRA (configs/demo-lora.yaml, a few minutes on 2 CPU cores), evaluates again
# with the new adapter, and asks the model a question before and after.
#   LLMTUNE_QUICKSTART_RUN   run directory (default runs/quickstart; replaced on every run)
#   LLMTUNE_QUICKSTART_ARGS  extra key=value overrides for the fine-tune (e.g. "train.max_steps=50")
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/common.sh"
bash "$here/setup.sh"
bash "$here/build.sh" --target llmtune
cd "$LLMTUNE_ROOT"
bin="$LLMTUNE_BUILD_DIR/llmtune"
run="${LLMTUNE_QUICKSTART_RUN:-runs/quickstart}"
[[ -f demo/model/model.safetensors ]] || die "demo/model/model.safetensors is missing (regenerate it with scripts/demo/make_demo.sh)"
"$bin" env
question="What is the opposite of the word cold?"

log "1/5 the bundled model before fine-tuning: loss on the held-out answers (demo/data/val.jsonl)"
"$bin" eval --model demo/model --data demo/data/val.jsonl --template alpaca --max-seq-len 128
log "2/5 the bundled model before fine-tuning, asked: $question"
"$bin" infer --model demo/model --prompt "$question" --max-new-tokens 40 --log-level warn
echo

log "3/5 LoRA fine-tuning: llmtune finetune configs/demo-lora.yaml output=$run"
rm -rf "$run"
# shellcheck disable=SC2086
"$bin" finetune configs/demo-lora.yaml output="$run" ${LLMTUNE_QUICKSTART_ARGS:-}

log "4/5 after fine-tuning: the same held-out loss with the adapter"
"$bin" eval --model demo/model --adapter "$run/adapter" --data demo/data/val.jsonl --template alpaca --max-seq-len 128
log "5/5 after fine-tuning, asked: $question"
"$bin" infer --model demo/model --adapter "$run/adapter" --prompt "$question" --max-new-tokens 40 --log-level warn
echo
log "done: the adapter is in $run/adapter (PEFT format), metrics in $run/metrics.jsonl, summary in $run/summary.json"
