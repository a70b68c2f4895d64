#!/usr/bin/env bash
# Regenerates the bundled demo (demo/) from nothing: the datasets, the tokenizer and the model config
# (make_demo.py, deterministic), then the weights: `llmtune finetune configs/demo-pretrain.yaml`
# pretrains the model from random init on demo/data/pretrain.jsonl, and its out/model weights are
# stored in demo/model as bf16. Finally checks that transformers loads the result.
#   scripts/demo/make_demo.sh [--no-weights]    (--no-weights: data, tokenizer and config only)
#   LLMTUNE_DEMO_RUN   the pretraining run directory (default runs/demo-pretrain)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$here/common.sh"
py=$(llmtune_python)
[[ -x "$py" ]] || bash "$here/setup.sh"
demo="$LLMTUNE_ROOT/demo"
run="${LLMTUNE_DEMO_RUN:-$LLMTUNE_ROOT/runs/demo-pretrain}"

rm -rf "$demo/data" "$demo/model"/{tokenizer.json,tokenizer_config.json,special_tokens_map.json,config.json,generation_config.json}
"$py" "$here/demo/make_demo.py" data "$demo"
"$py" "$here/demo/make_demo.py" model "$demo"
if [[ "${1:-}" != "--no-weights" ]]; then
  bash "$here/build.sh" --target llmtune
  rm -f "$demo/model/model.safetensors"
  rm -rf "$run"
  cd "$LLMTUNE_ROOT"
  log "pretraining the demo model (configs/demo-pretrain.yaml) into $run"
  "$LLMTUNE_BUILD_DIR/llmtune" finetune configs/demo-pretrain.yaml output="$run"
  "$py" "$here/demo/make_demo.py" weights "$demo" "$run/model"
fi
"$py" "$here/demo/make_demo.py" check "$demo"
du -sh "$demo"
