#!/usr/bin/env bash
# Prune, then recover by fine-tuning or by distillation, on the bundled demo model (demo/): removes
# one of demo/model's 4 layers (`llmtune prune --method layers`), then trains the pruned student
# twice with the same data, steps, learning rate and LoRA settings (configs/distill-demo.yaml):
# (a) `llmtune finetune` on the text alone, (b) `llmtune distill` from the unpruned model. Prints the
# perplexity on held-out prose (demo/data/pretrain_val.jsonl) of the teacher, the pruned student
# and both recovered students. 100 training steps each (2 x 100 x 8 windows of 128 tokens); the whole
# chain took 161 s on a 2-core machine shared with other jobs.
#   LLMTUNE_DISTILL_DEMO_RUN    run directory (default runs/distill-chain; replaced on every run)
#   LLMTUNE_DISTILL_DEMO_STEPS  optimizer steps of each training (default: the preset's)
#   LLMTUNE_DEMO_NO_BUILD=1     use the existing build/llmtune as is
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$here/common.sh"
[[ -n "${LLMTUNE_DEMO_NO_BUILD:-}" ]] || bash "$here/build.sh" --target llmtune
cd "$LLMTUNE_ROOT"
bin="$LLMTUNE_BUILD_DIR/llmtune"
run="${LLMTUNE_DISTILL_DEMO_RUN:-runs/distill-chain}"
preset=configs/distill-demo.yaml
val=demo/data/pretrain_val.jsonl
[[ -f demo/model/model.safetensors ]] || die "demo/model/model.safetensors is missing (regenerate it with scripts/demo/make_demo.sh)"
steps=()
[[ -z "${LLMTUNE_DISTILL_DEMO_STEPS:-}" ]] || steps=("train.max_steps=$LLMTUNE_DISTILL_DEMO_STEPS")
rm -rf "$run"
mkdir -p "$run"
start=$SECONDS

# One number from a --json report (pretty-printed: one key a line).
json_value() { sed -n "s/^ *\"$1\": *\([^,]*\),\{0,1\}$/\1/p" | head -1; }
perplexity() {  # MODEL [ADAPTER]
  "$bin" eval --model "$1" ${2:+--adapter "$2"} --data "$val" --max-seq-len 128 --log-level warn --json | json_value perplexity
}

log "1/5 prune: demo/model without its least useful layer (Block Influence) -> $run/student"
"$bin" prune --model demo/model --output "$run/student" --method layers --remove-layers 1 \
  --calibration demo/data/pretrain.jsonl --calibration-samples 128 --seq-len 128 --log-level warn --json > "$run/prune.json"

log "2/5 perplexity on $val before training: the teacher and the pruned student"
ppl_teacher=$(perplexity demo/model)
ppl_student=$(perplexity "$run/student")

# finetune gets exactly the preset's settings: distill's resolved config less its teacher.* and distill.* keys.
"$bin" distill "$preset" model.path="$run/student" output="$run/finetune" "${steps[@]}" --print-config |
  awk '/^[a-z]/ { skip = /^(teacher|distill):/ } !skip' > "$run/finetune.yaml"
log "3/5 (a) llmtune finetune $run/finetune.yaml: the student on the text alone"
"$bin" finetune "$run/finetune.yaml" --log-level warn --json > "$run/finetune.json"
log "4/5 (b) llmtune distill $preset: the student from the teacher demo/model, same data, steps and lr"
"$bin" distill "$preset" model.path="$run/student" output="$run/distill" "${steps[@]}" --log-level warn --json > "$run/distill.json"

log "5/5 perplexity on $val after training"
ppl_finetune=$(perplexity "$run/student" "$run/finetune/adapter")
ppl_distill=$(perplexity "$run/student" "$run/distill/adapter")

params_teacher=$(json_value parameters < "$run/prune.json")
params_student=$(json_value parameters_after < "$run/prune.json")
n_steps=$(json_value steps < "$run/distill.json")
{
  printf '\n%-44s %10s %11s\n' "model" "parameters" "perplexity"
  printf '%-44s %10s %11.3f\n' "teacher: demo/model (4 layers)" "$params_teacher" "$ppl_teacher"
  printf '%-44s %10s %11.3f\n' "student: pruned to 3 layers" "$params_student" "$ppl_student"
  printf '%-44s %10s %11.3f\n' "student + finetune ($n_steps LoRA steps)" "$params_student" "$ppl_finetune"
  printf '%-44s %10s %11.3f\n' "student + distill ($n_steps LoRA steps)" "$params_student" "$ppl_distill"
  printf '\nperplexity on %s (every token, windows of 128); %d s in all\n' "$val" $((SECONDS - start))
} | tee "$run/table.txt"
